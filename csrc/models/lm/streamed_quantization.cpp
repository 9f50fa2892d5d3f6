#include <moeprune/models/lm/streamed_quantization.h>

#include "models/lm/streamed_slimming.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace moeprune::lm {

std::string quantization_record(const compression::QuantizeOptions& options) {
  const auto& s = options.scheme();
  const auto& c = options.calibration();
  nlohmann::ordered_json j;
  j["method"] = compression::to_string(options.method());
  j["bits"] = s.bits();
  j["group_size"] = s.group_size();
  j["symmetric"] = s.symmetric();
  j["targets"] = c.targets().describe();
  j["stored"] = "dequantised";
  if (options.method() == compression::QuantMethod::kGPTQ) {
    j["act_order"] = options.gptq().act_order();
    j["static_groups"] = options.gptq().static_groups();
    j["percdamp"] = options.gptq().percdamp();
    j["calibration"] = compression::to_string(c.calibration());
    j["router_weighted"] = c.router_weighted();
    j["min_tokens"] = c.min_tokens();
    j["sequential"] = c.sequential();
  }
  if (!c.layers().empty()) j["layers"] = c.layers();
  return j.dump();
}

SparsifyCheckpointResult quantize_checkpoint(
    const CheckpointLayers& checkpoint, const torch::Tensor& calibration, const std::string& out,
    const QuantizeCheckpointOptions& options, const hf::WriteOptions& write,
    const compression::LayerSparsityCallback& on_layer,
    const compression::LinearSparsityCallback& on_linears) {
  const auto& q = options.quantize();
  const auto sparsity = compression::sparsity_detail::quantization_calibration(q);
  TORCH_CHECK(write.sparse_format == hf::SparseFormat::kDense,
              "quantize_checkpoint: writes dequantised weights in the checkpoint's own format "
              "only (packed formats are not written yet)");
  TORCH_CHECK(q.method() != compression::QuantMethod::kGPTQ || calibration.defined(),
              "quantize_checkpoint: gptq needs calibration token ids");
  // The targeted layers' inputs in whole groups, from the model's sizes, before any work (an
  // attention projection's inner width is checked when it is reached, naming it).
  const auto gs = q.scheme().group_size();
  const auto& o = checkpoint.options();
  const auto& targets = sparsity.targets();
  const auto check = [&](bool wanted, int64_t in, const char* what) {
    TORCH_CHECK(!wanted || gs == 0 || in <= 0 || in % gs == 0, "quantize_checkpoint: ", what,
                " of ", checkpoint.directory(), " have ", in,
                " inputs, not a whole number of groups of ", gs);
  };
  const int64_t width = checkpoint.info().hidden_dim;
  check(targets.experts || targets.attention || targets.shared_experts || targets.dense,
        o.hidden_size(), "the layers reading the hidden state");
  check(targets.experts, width, "the experts' down projections");
  check(targets.shared_experts, o.shared_expert_size(), "the shared experts' down projections");
  check(targets.dense, o.intermediate_size(), "the dense MLPs' down projections");
  return detail::slim_checkpoint(checkpoint, calibration, out,
                                 SparsifyCheckpointOptions()
                                     .sparsity(sparsity)
                                     .batch_size(options.batch_size())
                                     .stream(options.stream()),
                                 compression::sparsity_detail::quantization_transform(q),
                                 quantization_record(q), "quantization", write, on_layer,
                                 on_linears);
}

}  // namespace moeprune::lm
