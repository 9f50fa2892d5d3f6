#include <moeprune/models/lm/streamed_sparsity.h>

#include "hf/checkpoint_rewrite.h"
#include "models/lm/scratch_files.h"
#include "models/lm/streamed_moe_layers.h"

#include <moeprune/hf/checkpoint.h>
#include <moeprune/io/safetensors.h>
#include <moeprune/layers/moe_view.h>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <map>
#include <set>
#include <string>
#include <vector>

namespace moeprune::lm {
namespace streamed_sparsity_detail {

// Rounds the layer's expert weights to the dtypes the checkpoint stores them in (what the
// written folder will hold, and so what the next layer's calibration should see), then writes
// every held expert's tensors under its names, [out, in], to `path`.
void round_and_spill(const hf::Source& source, const hf::MoELayerRef& ref, const MoELayer& layer,
                     const std::string& path) {
  torch::NoGradGuard no_grad;
  const auto& bank = layer->experts();
  const std::vector<torch::Tensor> weights{bank->w1, bank->w2, bank->w3};
  const auto& ids = bank->expert_ids();
  safetensors::Writer writer(path);
  for (size_t b = 0; b < ids.size(); ++b) {
    const auto names = ref.expert_tensors(ids[b]);
    TORCH_CHECK(names.size() <= weights.size() && !names.empty(),
                "sparsify_checkpoint: ", ref.prefix,
                " has an expert layout moeprune does not sparsify");
    for (size_t w = 0; w < names.size(); ++w) {
      const auto type = source.checkpoint()
                            .file(source.checkpoint().shard_of(names[w]))
                            .info(names[w])
                            .scalar_type;
      auto slab = weights[w][static_cast<int64_t>(b)];
      const auto stored = slab.to(type);
      slab.copy_(stored);
      writer.add(names[w], stored.t().contiguous());
    }
  }
  writer.finish();
}

void check_checkpoint(const CheckpointLayers& checkpoint) {
  hf::detail::check_dense_source(checkpoint.source());
  for (const auto& ref : checkpoint.info().layers) {
    TORCH_CHECK(!ref.fused, checkpoint.directory(), ": ", ref.prefix,
                " stores its experts fused (transformers 5.x); sparsifying writes the per-expert "
                "layout only");
    TORCH_CHECK(ref.state.bank.rank == 0, checkpoint.directory(), ": ", ref.prefix,
                " is factorised (low rank plus sparse); sparsify before factorising");
  }
}

}  // namespace streamed_sparsity_detail

std::string sparsity_record(const compression::ExpertSparsityOptions& options) {
  nlohmann::ordered_json j;
  j["method"] = compression::to_string(options.method());
  j["pattern"] = options.pattern().describe();
  j["fraction"] = options.pattern().pruned_fraction();
  j["targets"] = "experts";
  if (options.method() != compression::SparsityMethod::kMagnitude) {
    j["calibration"] = compression::to_string(options.calibration());
    j["router_weighted"] = options.router_weighted();
    j["min_tokens"] = options.min_tokens();
    j["sequential"] = options.sequential();
  }
  if (!options.layers().empty()) {
    j["layers"] = options.layers();
  }
  return j.dump();
}

SparsifyCheckpointResult sparsify_checkpoint(const CheckpointLayers& checkpoint,
                                             const torch::Tensor& calibration,
                                             const std::string& out,
                                             const SparsifyCheckpointOptions& options,
                                             const hf::WriteOptions& write,
                                             const compression::LayerSparsityCallback& on_layer) {
  using streamed_sparsity_detail::round_and_spill;
  const auto& sparsity = options.sparsity();
  const auto& info = checkpoint.info();
  compression::check_sparsity_options(sparsity);
  streamed_sparsity_detail::check_checkpoint(checkpoint);
  const auto& pattern = sparsity.pattern();
  TORCH_CHECK(write.sparse_format != hf::SparseFormat::kCompressedTensors24 ||
                  (pattern.m == 4 && pattern.n <= 2),
              "sparsify_checkpoint: compressed-tensors stores 2:4-sparse weights only "
              "(sparse-24-bitmask); the pattern asked for is ",
              pattern.describe(), ": write it dense (the default) instead");
  std::set<int64_t> wanted;
  for (const auto key : sparsity.layers()) {
    TORCH_CHECK(key >= 0 && key < static_cast<int64_t>(info.layers.size()),
                "sparsify_checkpoint: MoE layer ", key, " is asked for; ", checkpoint.directory(),
                " has ", info.layers.size(), " (0 to ", info.layers.size() - 1, ")");
    wanted.insert(key);
  }
  const auto chosen = [&](int64_t index) { return wanted.empty() || wanted.count(index) > 0; };
  const bool magnitude = sparsity.method() == compression::SparsityMethod::kMagnitude;
  TORCH_CHECK(magnitude || calibration.defined(),
              "sparsify_checkpoint: ", compression::to_string(sparsity.method()),
              " needs calibration token ids");

  SparsifyCheckpointResult result;
  detail::ScratchFiles scratch(options.stream().scratch_dir(), "sparse");
  std::map<int64_t, std::string> files;
  const auto done = [&](const hf::MoELayerRef& ref, compression::LayerSparsityReport report,
                        const MoELayer& layer) {
    files[ref.index] = scratch.next(ref.index);
    round_and_spill(checkpoint.source(), ref, layer, files.at(ref.index));
    result.layers.push_back(std::move(report));
    if (on_layer) on_layer(result.layers.back());
  };
  if (magnitude && !calibration.defined()) {
    // No forward pass: each MoE layer alone, as it is stored.
    for (const auto& ref : info.layers) {
      if (!chosen(ref.index)) continue;
      auto layer = hf::load_moe_layer(checkpoint.checkpoint(), info, ref,
                                      hf::LoadOptions().dtype(checkpoint.dtype()));
      done(ref, compression::sparsify_moe_layer({ref.index, ref.prefix, layer}, nullptr, sparsity),
           layer);
    }
  } else {
    detail::stream_moe_layers(
        checkpoint, calibration, options.batch_size(), options.stream(),
        [&](const hf::MoELayerRef& ref, const MoELayerEntry& entry,
            const std::function<void()>& run, const std::function<void()>& probe) {
          if (!chosen(ref.index)) {
            run();
            return;
          }
          compression::LayerSparsityReport report;
          if (sparsity.sequential()) {
            // The pruned layer makes the next layer's inputs: capture, prune, then run.
            {
              MoECapture capture({entry}, /*with_inputs=*/true);
              probe();
              report = compression::sparsify_moe_layer(entry, &capture.calls(ref.index), sparsity);
            }
            done(ref, std::move(report), entry.layer);
            run();
          } else {
            MoECapture capture({entry}, /*with_inputs=*/true);
            run();
            report = compression::sparsify_moe_layer(entry, &capture.calls(ref.index), sparsity);
            done(ref, std::move(report), entry.layer);
          }
        },
        "sparsify");
  }
  result.report = hf::write_sparsified_checkpoint(checkpoint.source(), files, out,
                                                  sparsity_record(sparsity), write);
  return result;
}

}  // namespace moeprune::lm
