#include <moeprune/models/lm/streamed_sparsity.h>

#include "compression/pruned_linear.h"
#include "hf/checkpoint_rewrite.h"
#include "hf/compressed_tensors_pack.h"
#include "models/lm/checkpoint_tensors.h"
#include "models/lm/scratch_files.h"
#include "models/lm/streamed_moe_layers.h"
#include "models/lm/streamed_slimming.h"

#include <moeprune/compression/linear_sparsity.h>
#include <moeprune/hf/checkpoint.h>
#include <moeprune/io/safetensors.h>
#include <moeprune/layers/moe_view.h>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

namespace moeprune::lm {
namespace streamed_sparsity_detail {

// With `packed`: writes the pack-quantized parts of weight `name` (whose new values start at
// `at`) beside it, from the codes the transform recorded.
void spill_packed(detail::PackedSpill* packed, const void* at, const std::string& name,
                  torch::Dtype stored, safetensors::Writer& writer) {
  if (packed == nullptr) return;
  const auto it = packed->codes.find(at);
  TORCH_CHECK(it != packed->codes.end(), "quantize_checkpoint: ", name,
              " was not quantised; nothing to pack");
  TORCH_CHECK(stored == packed->scheme.scale_dtype(), "quantize_checkpoint: ", name,
              " is stored in ", stored, ", the scales were rounded to ",
              packed->scheme.scale_dtype(), " (the other quantised weights' dtype)");
  const auto& q = it->second;
  const auto parts = hf::detail::encode_pack_quantized(
      q.codes, q.scales, q.zeros, packed->g_idx ? q.g_idx : torch::Tensor(), packed->scheme.bits(),
      packed->scheme.symmetric(), stored, name);
  const auto module = hf::detail::weight_module(name);
  writer.add(module + ".weight_packed", parts.weight_packed);
  writer.add(module + ".weight_scale", parts.weight_scale);
  if (parts.weight_zero_point.defined())
    writer.add(module + ".weight_zero_point", parts.weight_zero_point);
  if (parts.weight_g_idx.defined()) writer.add(module + ".weight_g_idx", parts.weight_g_idx);
  writer.add(module + ".weight_shape", parts.weight_shape);
  packed->codes.erase(it);
}

// Rounds the layer's expert weights to the dtypes the checkpoint stores them in (what the
// written folder will hold, and so what the next layer's calibration should see), then writes
// every held expert's tensors under its names, [out, in], to `path` (and their pack-quantized
// parts with `packed`).
void round_and_spill(const hf::Source& source, const hf::MoELayerRef& ref, const MoELayer& layer,
                     const std::string& path, detail::PackedSpill* packed) {
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
      spill_packed(packed, slab.data_ptr(), names[w], type, writer);
    }
  }
  writer.finish();
}

// Rounds the dense layers' weights to their stored dtypes (as round_and_spill does for experts)
// and writes them under their checkpoint names to `path`.
void round_and_spill_linears(const hf::Source& source, const std::vector<LinearEntry>& linears,
                             const std::string& path, detail::PackedSpill* packed) {
  torch::NoGradGuard no_grad;
  safetensors::Writer writer(path);
  for (const auto& entry : linears) {
    const auto name = entry.name + ".weight";
    const auto type =
        source.checkpoint().file(source.checkpoint().shard_of(name)).info(name).scalar_type;
    auto weight = entry.linear->weight.detach();
    const auto stored = weight.to(type);
    weight.copy_(stored);
    writer.add(name, stored.contiguous());
    spill_packed(packed, weight.data_ptr(), name, type, writer);
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
  j["targets"] = options.targets().describe();
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

SparsifyCheckpointResult sparsify_checkpoint(
    const CheckpointLayers& checkpoint, const torch::Tensor& calibration, const std::string& out,
    const SparsifyCheckpointOptions& options, const hf::WriteOptions& write,
    const compression::LayerSparsityCallback& on_layer,
    const compression::LinearSparsityCallback& on_linears) {
  const auto& sparsity = options.sparsity();
  compression::check_sparsity_options(sparsity);
  const auto& pattern = sparsity.pattern();
  TORCH_CHECK(write.sparse_format != hf::SparseFormat::kCompressedTensors24 ||
                  (pattern.m == 4 && pattern.n <= 2),
              "sparsify_checkpoint: compressed-tensors stores 2:4-sparse weights only "
              "(sparse-24-bitmask); the pattern asked for is ",
              pattern.describe(), ": write it dense (the default) instead");
  const bool magnitude = sparsity.method() == compression::SparsityMethod::kMagnitude;
  TORCH_CHECK(magnitude || calibration.defined(),
              "sparsify_checkpoint: ", compression::to_string(sparsity.method()),
              " needs calibration token ids");
  return detail::slim_checkpoint(checkpoint, calibration, out, options, {},
                                 sparsity_record(sparsity), "sparsity", write, on_layer,
                                 on_linears);
}

SparsifyCheckpointResult detail::slim_checkpoint(
    const CheckpointLayers& checkpoint, const torch::Tensor& calibration, const std::string& out,
    const SparsifyCheckpointOptions& options,
    const compression::sparsity_detail::LinearTransform& transform, const std::string& record,
    const std::string& record_list, const hf::WriteOptions& write,
    const compression::LayerSparsityCallback& on_layer,
    const compression::LinearSparsityCallback& on_linears, PackedSpill* packed) {
  using streamed_sparsity_detail::round_and_spill;
  using streamed_sparsity_detail::round_and_spill_linears;
  const auto& sparsity = options.sparsity();
  const auto& targets = sparsity.targets();
  const auto& info = checkpoint.info();
  streamed_sparsity_detail::check_checkpoint(checkpoint);
  TORCH_CHECK(targets.experts || targets.beyond_experts(), "sparsify_checkpoint: no targets");
  TORCH_CHECK(sparsity.layers().empty() || !targets.beyond_experts(),
              "sparsify_checkpoint: layers select MoE layers; with targets beyond the experts (",
              targets.describe(), ") every decoder layer is sparsified: leave the layers out");
  std::set<int64_t> wanted;
  for (const auto key : sparsity.layers()) {
    TORCH_CHECK(key >= 0 && key < static_cast<int64_t>(info.layers.size()),
                "sparsify_checkpoint: MoE layer ", key, " is asked for; ", checkpoint.directory(),
                " has ", info.layers.size(), " (0 to ", info.layers.size() - 1, ")");
    wanted.insert(key);
  }
  const auto chosen = [&](int64_t index) {
    return targets.experts && (wanted.empty() || wanted.count(index) > 0);
  };
  // Every targeted role must have layers somewhere in the model (decoder layers are built one at
  // a time below, so this reads the options).
  const auto& o = checkpoint.options();
  const bool has_dense = [&] {
    for (int64_t i = 0; i < o.num_layers(); ++i) {
      if (!o.moe_layers()[static_cast<size_t>(i)]) return true;
    }
    return false;
  }();
  for (const auto& [want, has, role] :
       {std::tuple<bool, bool, const char*>{targets.shared_experts, o.shared_expert_size() > 0,
                                            "shared_experts"},
        {targets.dense, has_dense, "dense"}}) {
    TORCH_CHECK(!want || has || targets.everything, "sparsify_checkpoint: the target ", role,
                " has no linear layers in ", checkpoint.directory(), " (", o.model_type(), ")");
  }

  SparsifyCheckpointResult result;
  detail::ScratchFiles scratch(options.stream().scratch_dir(), "sparse");
  std::map<int64_t, std::string> files;
  std::vector<std::string> linear_files;
  std::map<int64_t, const hf::MoELayerRef*> by_decoder_layer;
  for (const auto& ref : info.layers) by_decoder_layer[ref.decoder_layer] = &ref;
  // What decoder layer `index` has to prune: its MoE layer (null: none) and dense layers.
  const auto targeted = [&](int64_t index, DecoderLayer& layer) {
    const auto it = by_decoder_layer.find(index);
    const hf::MoELayerRef* ref =
        it != by_decoder_layer.end() && layer->is_moe() && chosen(it->second->index) ? it->second
                                                                                     : nullptr;
    std::vector<LinearEntry> linears;
    if (targets.beyond_experts()) {
      for (auto& entry : detail::layer_linears(o, *layer, index)) {
        if (targets.wants(entry.role)) linears.push_back(std::move(entry));
      }
    }
    return std::make_pair(ref, compression::group_linears(linears));
  };
  // Prunes what `targeted` found (calls / stats null: no calibration), spills it, reports it.
  const auto prune = [&](const hf::MoELayerRef* ref, const MoELayer& moe, const LayerCalls* calls,
                         const std::vector<std::vector<LinearEntry>>& groups,
                         const std::vector<compression::InputStatistics>* stats,
                         int64_t decoder_layer) {
    if (ref != nullptr) {
      auto report = compression::sparsity_detail::slim_moe_layer({ref->index, ref->prefix, moe},
                                                                 calls, sparsity, transform);
      files[ref->index] = scratch.next(ref->index);
      round_and_spill(checkpoint.source(), *ref, moe, files.at(ref->index), packed);
      result.layers.push_back(std::move(report));
      if (on_layer) on_layer(result.layers.back());
    }
    if (groups.empty()) return;
    size_t at = 0;
    std::vector<LinearEntry> all;
    for (const auto& group : groups) {
      std::optional<std::vector<compression::InputStatistics>> own;
      if (stats != nullptr) {
        own.emplace(stats->begin() + static_cast<std::ptrdiff_t>(at),
                    stats->begin() + static_cast<std::ptrdiff_t>(at + group.size()));
      }
      at += group.size();
      result.linears.push_back(compression::sparsity_detail::slim_linears(
          group, own ? &*own : nullptr, sparsity, transform));
      if (on_linears) on_linears(result.linears.back());
      all.insert(all.end(), group.begin(), group.end());
    }
    linear_files.push_back(scratch.next(checkpoint.num_layers() + decoder_layer));
    round_and_spill_linears(checkpoint.source(), all, linear_files.back(), packed);
  };
  const auto flatten = [](const std::vector<std::vector<LinearEntry>>& groups) {
    std::vector<LinearEntry> out;
    for (const auto& g : groups) out.insert(out.end(), g.begin(), g.end());
    return out;
  };

  if (!calibration.defined()) {
    // No forward pass: each decoder layer alone, as it is stored.
    for (int64_t index = 0; index < checkpoint.num_layers(); ++index) {
      auto layer = checkpoint.layer(index);
      const auto [ref, groups] = targeted(index, layer);
      prune(ref, layer->is_moe() ? layer->moe_block->moe : MoELayer{nullptr}, nullptr, groups,
            nullptr, index);
      checkpoint.release_layer(index);
    }
  } else {
    TORCH_CHECK(calibration.dim() == 2 && calibration.size(0) >= 1 && calibration.size(1) >= 1,
                "sparsify needs calibration data: [N, S] token ids, got ", calibration.sizes());
    TORCH_CHECK(options.batch_size() >= 1, "sparsify: batch_size should be >= 1, got ",
                options.batch_size());
    std::vector<torch::Tensor> batches;
    for (int64_t start = 0; start < calibration.size(0); start += options.batch_size()) {
      batches.push_back(
          calibration.slice(0, start, std::min(start + options.batch_size(), calibration.size(0))));
    }
    detail::streamed_hidden_states_probing(
        checkpoint, batches, options.stream(),
        [&](int64_t index, DecoderLayer& layer, const std::function<void()>& run,
            const std::function<void()>& probe) {
          const auto [ref, groups] = targeted(index, layer);
          if (ref == nullptr && groups.empty()) {
            run();
            return;
          }
          const auto moe = ref != nullptr ? layer->moe_block->moe : MoELayer{nullptr};
          const MoELayerEntry entry{ref != nullptr ? ref->index : 0,
                                    ref != nullptr ? ref->prefix : "", moe};
          // The block's experts and dense layers from one pass, pruned after it; sequentially,
          // the pruned layer then makes the next layer's inputs.
          const auto calibrate_and_prune = [&](const std::function<void()>& pass) {
            std::optional<MoECapture> capture;
            if (ref != nullptr) capture.emplace(std::vector<MoELayerEntry>{entry}, true);
            std::optional<compression::LinearCalibration> inputs;
            if (!groups.empty()) inputs.emplace(flatten(groups));
            pass();
            std::optional<std::vector<compression::InputStatistics>> stats;
            if (inputs) stats.emplace(inputs->finish());
            prune(ref, moe, capture ? &capture->calls(ref->index) : nullptr, groups,
                  stats ? &*stats : nullptr, index);
          };
          if (sparsity.sequential()) {
            calibrate_and_prune(probe);
            run();
          } else {
            calibrate_and_prune(run);
          }
        });
  }
  TORCH_CHECK(packed == nullptr || packed->codes.empty(),
              "quantize_checkpoint: ", packed == nullptr ? 0 : packed->codes.size(),
              " quantised weights were not written (a layer moeprune cannot spill)");
  result.report = hf::write_sparsified_checkpoint(checkpoint.source(), files, out, record, write,
                                                  linear_files, record_list);
  return result;
}

}  // namespace moeprune::lm
