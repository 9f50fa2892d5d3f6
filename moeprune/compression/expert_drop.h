#pragma once

// Expert Drop (He et al. 2024, "Demystifying the Compression of Mixture-of-Experts Through a
// Unified Framework"; DaizeDong/Unified-MoE-Compression, src/llmtuner/compression/prune/):
// experts removed by their routing score on calibration data, in one pass over any model's MoE
// view. Layer Drop and Block Drop, which need the residual stream, live with the models
// (models/vision/trimming.h).
#include <moeprune/layers/moe_view.h>
#include <moeprune/pruning/pruning_plan.h>

#include <torch/arg.h>

#include <cstdint>

namespace moeprune::compression {

struct ExpertDropOptions {
  /// Experts dropped in every MoE layer (the same count everywhere) ...
  TORCH_ARG(int64_t, per_layer) = 0;
  /// ... or this many over all MoE layers, lowest routing scores first (a global ranking; every
  /// layer keeps at least what its router needs). Exactly one of the two is > 0.
  TORCH_ARG(int64_t, total) = 0;
  /// Remove the dropped experts' router rows (the reference default: softmax and renormalised
  /// top-k over the survivors); false keeps them, so tokens routed there are lost.
  TORCH_ARG(bool, remove_router_rows) = true;
};

/// Expert Drop: score_e = sum over calibration tokens of softmax(router logits)_e (the reference
/// takes the mean over samples of the per-sample sum, which ranks the same), the lowest dropped.
/// `view` needs calibration data. Applies the plan to the view's layers and returns it.
pruning::PruningPlan expert_drop(const MoEView& view, const ExpertDropOptions& options);

}  // namespace moeprune::compression
