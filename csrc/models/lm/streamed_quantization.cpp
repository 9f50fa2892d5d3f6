#include <moeprune/models/lm/streamed_quantization.h>

#include "models/lm/streamed_slimming.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

namespace moeprune::lm {

QuantFormat parse_quant_format(const std::string& name) {
  if (name == "dense") return QuantFormat::kDense;
  if (name == "compressed-tensors") return QuantFormat::kCompressedTensors;
  TORCH_CHECK(false, "unknown quantised format '", name, "' (dense, compressed-tensors)");
}

std::string to_string(QuantFormat format) {
  return format == QuantFormat::kDense ? "dense" : "compressed-tensors";
}

std::string quantization_record(const compression::QuantizeOptions& options, QuantFormat format) {
  const auto& s = options.scheme();
  const auto& c = options.calibration();
  nlohmann::ordered_json j;
  j["method"] = compression::to_string(options.method());
  j["bits"] = s.bits();
  j["group_size"] = s.group_size();
  j["symmetric"] = s.symmetric();
  j["targets"] = c.targets().describe();
  j["stored"] = format == QuantFormat::kDense ? "dequantised" : "pack-quantized";
  if (options.method() == compression::QuantMethod::kGPTQ) {
    j["act_order"] = options.gptq().act_order();
    j["static_groups"] = options.gptq().static_groups();
    j["percdamp"] = options.gptq().percdamp();
  }
  if (options.method() == compression::QuantMethod::kAWQ) {
    j["grid"] = options.awq().grid();
    j["clip"] = options.awq().clip();
    if (options.awq().clip()) j["max_shrink"] = options.awq().max_shrink();
  }
  if (options.method() != compression::QuantMethod::kRTN) {
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
  auto q = options.quantize();
  const auto sparsity = compression::sparsity_detail::quantization_calibration(q);
  TORCH_CHECK(write.sparse_format == hf::SparseFormat::kDense && !write.packed,
              "quantize_checkpoint: the format is QuantizeCheckpointOptions::format");
  TORCH_CHECK(q.method() == compression::QuantMethod::kRTN || calibration.defined(),
              "quantize_checkpoint: ", compression::to_string(q.method()),
              " needs calibration token ids");
  TORCH_CHECK(
      q.method() != compression::QuantMethod::kAWQ || options.format() == QuantFormat::kDense,
      "quantize_checkpoint: AWQ's codes stand for the weights times its input scales, "
      "which must be folded into the previous operation (the norm, the up projection) "
      "to store them packed; moeprune writes AWQ dense (--format dense) for now");
  // The scales in the dtype the checkpoint stores its weights in (both formats hold that model).
  const auto& info = checkpoint.info();
  if (!info.layers.empty()) {
    const auto name = info.layers.front().expert_tensors(0).front();
    const auto& c = checkpoint.source().checkpoint();
    q.scheme().scale_dtype(c.file(c.shard_of(name)).info(name).scalar_type);
  }
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
  auto written = write;
  std::optional<detail::PackedSpill> packed;
  if (options.format() == QuantFormat::kCompressedTensors) {
    packed.emplace();
    packed->scheme = q.scheme();
    const auto& g = q.gptq();
    // With one group per row every input is in group 0: act-order changes the codes, not the
    // layout (compressed-tensors allows actorder with group strategies only).
    const bool act_order = q.method() == compression::QuantMethod::kGPTQ && g.act_order() &&
                           q.scheme().group_size() > 0;
    packed->g_idx = act_order && !g.static_groups();
    written.packed =
        hf::PackedQuantization{q.scheme().bits(), q.scheme().group_size(), q.scheme().symmetric(),
                               act_order ? (packed->g_idx ? "group" : "weight") : ""};
  }
  return detail::slim_checkpoint(
      checkpoint, calibration, out,
      SparsifyCheckpointOptions()
          .sparsity(sparsity)
          .batch_size(options.batch_size())
          .stream(options.stream()),
      compression::sparsity_detail::quantization_transform(q, packed ? &packed->codes : nullptr),
      quantization_record(q, options.format()), "quantization", written, on_layer, on_linears,
      packed ? &*packed : nullptr);
}

}  // namespace moeprune::lm
