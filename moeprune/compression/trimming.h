#pragma once

// Expert trimming (He et al. 2024, "Demystifying the Compression of Mixture-of-Experts Through a
// Unified Framework"; code DaizeDong/Unified-MoE-Compression, src/llmtuner/compression/prune/):
// Expert Drop removes experts by their routing score, Layer Drop removes whole MoE sub-blocks
// and Block Drop whole transformer blocks, each scored on calibration data by how little it
// changes the hidden states. All three score the model as it is, in one pass (no re-scoring
// between drops), as the reference code does.
#include <moeprune/pruning/criterion.h>
#include <moeprune/pruning/pruning_plan.h>
#include <moeprune/vision_transformer.h>

#include <torch/arg.h>

#include <cstdint>
#include <map>
#include <vector>

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
/// Applies the plan to `model` and returns it.
pruning::PruningPlan expert_drop(VisionTransformer& model, const pruning::CalibrationData& data,
                                 const ExpertDropOptions& options);

/// Layer Drop scores: for each MoE block whose MoE sub-block is still there, the mean over
/// calibration tokens of cos(h, h + MoE(LN(h))), h the residual stream entering the sub-block.
std::map<int64_t, double> moe_layer_similarity(VisionTransformer& model,
                                               const pruning::CalibrationData& data);

/// Layer Drop: removes the MoE sub-blocks of the `n` MoE blocks with the highest
/// moe_layer_similarity (their attention stays). Returns the blocks, increasing.
std::vector<int64_t> layer_drop(VisionTransformer& model, const pruning::CalibrationData& data,
                                int64_t n);

/// Block Drop scores: element i is the mean over calibration tokens of cos(h_i, h_{i+span}),
/// h_i the residual stream entering block i (h_depth: the last block's output); depth - span + 1
/// entries. Blocks already dropped score as the identity they now are.
std::vector<double> block_similarity(VisionTransformer& model, const pruning::CalibrationData& data,
                                     int64_t span = 1);

/// Block Drop: removes `n` whole blocks, either the n with the highest cos(h_i, h_{i+1})
/// (discrete) or the run i..i+n-1 with the highest cos(h_i, h_{i+n}) (consecutive; the reference
/// code scores a run one block longer than it drops, this scores the run it drops). Blocks
/// already dropped are not counted. Returns the blocks, increasing.
std::vector<int64_t> block_drop(VisionTransformer& model, const pruning::CalibrationData& data,
                                int64_t n, bool consecutive = false);

}  // namespace moeprune::compression
