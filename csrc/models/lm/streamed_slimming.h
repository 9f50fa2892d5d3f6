#pragma once

// What sparsify_checkpoint and quantize_checkpoint share: the layer-streamed calibration of a
// checkpoint's experts and targeted dense layers, each linear pruned, or changed by `transform`
// when set, spilled in its stored dtype and written by hf::write_sparsified_checkpoint.
#include <moeprune/models/lm/streamed_sparsity.h>

#include "compression/pruned_linear.h"

#include <string>

namespace moeprune::lm::detail {

/// The method-specific checks are the caller's. Without `calibration` no forward pass runs (each
/// linear gets no calibration). `record` (a JSON object) is appended to config.json's
/// "moeprune"[`record_list`].
SparsifyCheckpointResult slim_checkpoint(
    const CheckpointLayers& checkpoint, const torch::Tensor& calibration, const std::string& out,
    const SparsifyCheckpointOptions& options,
    const compression::sparsity_detail::LinearTransform& transform, const std::string& record,
    const std::string& record_list, const hf::WriteOptions& write,
    const compression::LayerSparsityCallback& on_layer,
    const compression::LinearSparsityCallback& on_linears);

}  // namespace moeprune::lm::detail
