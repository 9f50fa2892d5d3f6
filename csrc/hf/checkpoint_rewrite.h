#pragma once

// What write_pruned_checkpoint and write_merged_checkpoint share: the source's MoE layers as they
// will be rewritten (experts removed, zeroed or replaced by merged weights), and the streamed,
// atomic writing of the output folder.
#include <moeprune/hf/pruning.h>

#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

namespace moeprune::hf::detail {

// What happens to one MoE layer of the source: pruned experts (`gone`, dropped or zeroed), or,
// when `merged` is set, every expert j written with the weights of expert front[j] as the file
// `merged` holds them (its group's first expert; j itself for a sparsified expert; -1: copied).
struct PrunedLayer {
  const MoELayerRef* ref = nullptr;
  std::vector<int64_t> gone;  // pruned expert ids, increasing
  std::vector<int64_t> kept;  // the others, increasing
  const safetensors::File* merged = nullptr;
  std::vector<int64_t> front;
  // With `merged`: when set, each expert weight `X.weight` of `merged` that this file holds
  // encoded (encoded_parts) is written as those parts, renamed like the weight, instead of dense.
  const safetensors::File* encoded = nullptr;
};

// The tensors that stand for X.weight in `file` when it holds X encoded (compressed-tensors'
// sparse-24-bitmask X.compressed, X.bitmask, X.shape; pack-quantized X.weight_packed,
// X.weight_scale, X.weight_zero_point, X.weight_g_idx, X.weight_shape): the suffixes present;
// empty when X is not encoded there.
std::vector<std::string> encoded_parts(const safetensors::File& file, const std::string& module);

// A tensor written from another file instead of the source (a sparsified dense layer's weight):
// `file` holds the new values under the source's name, same shape and dtype; when `encoded` is
// set and holds the weight X.weight encoded (encoded_parts), those parts are written instead.
struct Replacement {
  const safetensors::File* file = nullptr;
  const safetensors::File* encoded = nullptr;
};
using Replacements = std::map<std::string, Replacement>;

/// Writes the folder `out` (a temporary folder renamed at the end): every shard of `source`
/// under the same name with `layers` rewritten (router rows cut when `cut`), the index,
/// `config_text` as config.json, the `extra` files, and the source's other files byte for byte;
/// the `replaced` tensors from their files.
WriteReport write_folder(const Source& source, const std::map<std::string, PrunedLayer>& layers,
                         bool cut, const std::string& out, const std::string& config_text,
                         const std::map<std::string, std::string>& extra,
                         const WriteOptions& options, const Replacements& replaced = {});

/// "X.weight" -> "X"; empty for a name that is not a weight.
std::string weight_module(const std::string& name);

/// Refuses a source read through decoded tensors (compressed-tensors' sparse and pack-quantized
/// formats) where new or zeroed weights are to be written: the writers copy the source's bytes,
/// which are not the dense weights there (cutting experts out copies or drops whole parts).
void check_dense_source(const Source& source);

/// Carries a Layer-Dropped source's "dropped_mlp_layers" (lm::save_causal_lm) into `record`, so
/// its zero MoE blocks stay dropped on reload.
void keep_dropped_mlp_layers(const nlohmann::ordered_json& config, nlohmann::ordered_json& record);

/// Carries the source's "sparsity" and "quantization" lists (write_sparsified_checkpoint) into
/// `record`: pruning experts out keeps the others' zeros and codes (merging averages them away,
/// so it does not carry them).
void keep_slimming_records(const nlohmann::ordered_json& config, nlohmann::ordered_json& record);

}  // namespace moeprune::hf::detail
