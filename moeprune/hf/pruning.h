#pragma once

// Expert pruning of Hugging Face checkpoints on disk: score the experts of every MoE layer
// (hf/scoring.h: one layer at a time, routers only when the criterion allows), plan, then write
// a checkpoint folder that transformers loads, streaming tensors from the source files so
// memory stays bounded whatever the checkpoint's size.

#include <moeprune/hf/checkpoint.h>
#include <moeprune/hf/scoring.h>
#include <moeprune/hf/source.h>
#include <moeprune/layers/moe_view.h>
#include <moeprune/pruning/criterion.h>
#include <moeprune/pruning/pruning_plan.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace moeprune::hf {

/// What happens to the router rows of pruned experts.
enum class RouterRows {
  /// Cut (Expert Drop; what a smaller transformers model is): rows and experts removed, the
  /// survivors renumbered, config's expert count reduced. Every MoE layer must lose the same
  /// number, since the config holds one count.
  kCut,
  /// Kept (Chowdhury et al.'s token-choice semantics): the router keeps its E rows, softmax and
  /// top-k still see every expert, and the pruned experts' weights are written as zeros, so
  /// transformers computes exactly "a slot routed to a pruned expert outputs zero". The file does
  /// not shrink; moeprune's loader frees the zeroed experts (config.json "moeprune" section).
  kKeep,
};

/// The MoE view of a checkpoint's layers for plan building (pruning::PruningPlan): every MoE
/// layer keyed by its index and named by its prefix, routers only (no expert weights are read),
/// with the checkpoint's signature (model type, sizes, layer prefixes).
std::shared_ptr<LayerMapView> router_view(const Source& source);

/// The keys of the MoE layers named by index or prefix (`--layers`); throws listing the known
/// ones for a name that is neither.
std::vector<int64_t> layer_keys(const ModelInfo& info, const std::vector<std::string>& names);

/// How write_sparsified_checkpoint stores the sparse experts.
enum class SparseFormat {
  /// The source's format with exact zeros (the default): every tool loads it; the files do not
  /// shrink.
  kDense,
  /// compressed-tensors' "sparse-24-bitmask" (needs 2:4-sparse experts): each expert weight
  /// stored as its kept half plus a bitmask, about 56% of the bf16 bytes. transformers 4.x with
  /// compressed-tensors <= 0.14.0.1 loads it (later releases removed the sparse compressors);
  /// moeprune's readers decode it, its writers refuse it as a source.
  kCompressedTensors24,
};
/// "dense" or "compressed-tensors".
SparseFormat parse_sparse_format(const std::string& name);
std::string to_string(SparseFormat format);

/// How write_sparsified_checkpoint stores quantised weights in compressed-tensors'
/// "pack-quantized" (what llm-compressor writes for W4A16 and W8A16; transformers with the
/// compressed-tensors package and vLLM load it).
struct PackedQuantization {
  int64_t bits = 4;
  int64_t group_size = 128;  ///< inputs per scale; 0: one per output row ("channel")
  bool symmetric = true;
  /// compressed-tensors' actorder: "" (none), "group" (act-order, each input's group in
  /// X.weight_g_idx) or "weight" (act-order with static groups: no g_idx); groups only.
  std::string actorder;
};

struct WriteOptions {
  RouterRows router = RouterRows::kCut;
  /// write_sparsified_checkpoint only.
  SparseFormat sparse_format = SparseFormat::kDense;
  /// write_sparsified_checkpoint only: when set, each new weight X.weight whose file also holds
  /// its pack-quantized parts (X.weight_packed, X.weight_scale, X.weight_shape and, as the
  /// scheme needs, X.weight_zero_point and X.weight_g_idx) is written as those parts, and
  /// config.json gets the quantization_config describing them.
  std::optional<PackedQuantization> packed;
  /// Called as bytes are written (done, total).
  std::function<void(uint64_t, uint64_t)> progress;
};

/// What write_pruned_checkpoint wrote.
struct WriteReport {
  uint64_t bytes_written = 0;  ///< safetensors bytes (headers and data)
  uint64_t tensors_copied = 0;
  uint64_t tensors_sliced = 0;
  uint64_t tensors_dropped = 0;
  uint64_t tensors_zeroed = 0;
  uint64_t tensors_merged = 0;  ///< tensors written with new weights (merged or sparsified)
};

/// Writes `source` pruned by `plan` to the new folder `out` (which must not exist): each shard
/// with the same name, tensors of untouched layers copied byte for byte, config.json with the
/// new expert count and a "moeprune" section (criterion, router rows, pruned experts),
/// model.safetensors.index.json rewritten, pruning_plan.json, and the folder's other files
/// copied. Everything is written under a temporary folder that is renamed at the end, so a
/// failure leaves no partial output.
WriteReport write_pruned_checkpoint(const Source& source, const pruning::PruningPlan& plan,
                                    const std::string& out, const WriteOptions& options = {});

/// One MoE layer whose experts were merged (M-SMoE), for write_merged_checkpoint.
struct MergedLayer {
  /// The layer's state after merging (its bank's groups of original ids, each group's lowest id
  /// first, as ExpertBank::merge_experts records them).
  MoELayerState state;
  /// A safetensors file holding, for every group, its first expert's tensors under the
  /// checkpoint's names, dtype and [out, in] layout, with the merged values.
  std::string weights;
};

/// Writes `source` with the MoE layers in `merged` (keyed by MoELayerRef::index) merged: the
/// router keeps its E rows and every expert of a group is written with the group's merged
/// weights, so transformers loads the folder as it is and computes the merged model exactly (the
/// file does not shrink: safetensors cannot alias tensors). config.json's "moeprune" section
/// records `method`, the groups and the layer states, from which moeprune's loaders hold one
/// expert per group; merge_groups.json lists the groups. Per-expert layouts only (a fused
/// transformers 5.x checkpoint is refused). Written like write_pruned_checkpoint: streamed, into
/// a temporary folder renamed at the end.
WriteReport write_merged_checkpoint(const Source& source,
                                    const std::map<int64_t, MergedLayer>& merged,
                                    const std::string& out, const std::string& method = "m-smoe",
                                    const WriteOptions& options = {});

/// Writes `source` with the expert tensors of the MoE layers in `experts` replaced: keyed by
/// MoELayerRef::index, each value a safetensors file holding every expert the layer's bank holds
/// (a merged layer: each group's first member) under the checkpoint's names, dtype and [out, in]
/// layout. A merged group's other members get their first member's tensors; experts the bank
/// does not hold (zeroed by pruning) and every other tensor are copied byte for byte.
/// config.json keeps the source's "moeprune" section and appends `record` (a JSON object: what
/// was done) to its `record_list` list ("sparsity", or "quantization" for dequantised weights).
/// `linears`: safetensors files of other weights replaced
/// (sparsified dense layers: attention, shared experts, dense MLPs), each tensor under the
/// checkpoint's name, dtype and shape. Per-expert layouts only. Written like
/// write_pruned_checkpoint: streamed, into a temporary folder renamed at the end.
WriteReport write_sparsified_checkpoint(const Source& source,
                                        const std::map<int64_t, std::string>& experts,
                                        const std::string& out, const std::string& record,
                                        const WriteOptions& options = {},
                                        const std::vector<std::string>& linears = {},
                                        const std::string& record_list = "sparsity");

}  // namespace moeprune::hf
