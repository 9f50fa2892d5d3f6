#pragma once

// What sparsify_checkpoint and quantize_checkpoint share: the layer-streamed calibration of a
// checkpoint's experts and targeted dense layers, each linear pruned, or changed by `transform`
// when set, spilled in its stored dtype and written by hf::write_sparsified_checkpoint.
#include <moeprune/models/lm/streamed_sparsity.h>

#include "compression/pruned_linear.h"

#include <string>

namespace moeprune::lm::detail {

/// Quantised weights to store pack-quantized: the transform records each weight's codes in
/// `codes`, and each spilled weight X.weight gets its parts (X.weight_packed ...) beside it.
struct PackedSpill {
  compression::sparsity_detail::QuantizedWeights codes;
  compression::QuantScheme scheme;
  bool g_idx = false;  ///< store each input's group (act-order without static groups)
};

/// The method-specific checks are the caller's. Without `calibration` no forward pass runs (each
/// linear gets no calibration). `record` (a JSON object) is appended to config.json's
/// "moeprune"[`record_list`].
SparsifyCheckpointResult slim_checkpoint(
    const CheckpointLayers& checkpoint, const torch::Tensor& calibration, const std::string& out,
    const SparsifyCheckpointOptions& options,
    const compression::sparsity_detail::LinearTransform& transform, const std::string& record,
    const std::string& record_list, const hf::WriteOptions& write,
    const compression::LayerSparsityCallback& on_layer,
    const compression::LinearSparsityCallback& on_linears, PackedSpill* packed = nullptr);

}  // namespace moeprune::lm::detail
