#include <moeprune/hf/source.h>

#include "hf/compressed_tensors_quantized.h"
#include "hf/compressed_tensors_sparse.h"
#include "hf/config.h"
#include "hf/describe.h"
#include "hf/fp8_blocks.h"
#include "hf/gptq_layout.h"

namespace moeprune::hf {
namespace {

// describe() once weights stored in compressed-tensors' sparse or pack-quantized formats, in
// block-scaled FP8 or in the GPTQ layout, read as dense ones.
ModelInfo describe_decoded(const Config& config, safetensors::Checkpoint& checkpoint) {
  detail::add_compressed_tensors_weights(config, checkpoint);
  detail::add_pack_quantized_weights(config, checkpoint);
  detail::add_fp8_block_weights(config, checkpoint);
  detail::add_gptq_weights(config, checkpoint);
  return detail::describe(config, checkpoint);
}

}  // namespace

struct Source::State {
  explicit State(const std::string& dir)
      : directory(dir), checkpoint(dir), config(dir), info(describe_decoded(config, checkpoint)) {}
  std::string directory;
  // The tensors first: a folder that is not a checkpoint is refused as the loaders refuse it.
  safetensors::Checkpoint checkpoint;
  Config config;
  ModelInfo info;
};

Source::Source(const std::string& directory) : state_(std::make_shared<State>(directory)) {}

const std::string& Source::directory() const {
  return state_->directory;
}
const safetensors::Checkpoint& Source::checkpoint() const {
  return state_->checkpoint;
}
const ModelInfo& Source::info() const {
  return state_->info;
}
const Config& Source::config() const {
  return state_->config;
}

}  // namespace moeprune::hf
