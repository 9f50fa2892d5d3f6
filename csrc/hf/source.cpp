#include <moeprune/hf/source.h>

#include "hf/config.h"
#include "hf/describe.h"

namespace moeprune::hf {

struct Source::State {
  explicit State(const std::string& dir)
      : directory(dir), checkpoint(dir), config(dir), info(detail::describe(config, checkpoint)) {}
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
