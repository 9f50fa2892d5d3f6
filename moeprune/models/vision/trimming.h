#pragma once

// Layer and Block Drop for the VisionTransformer (He et al. 2024, "Demystifying the Compression of
// Mixture-of-Experts Through a Unified Framework"; code DaizeDong/Unified-MoE-Compression,
// src/llmtuner/compression/prune/): Layer Drop removes whole MoE sub-blocks and Block Drop whole
// transformer blocks, each scored on calibration data by how little it changes the residual
// stream. Both score the model as it is, in one pass (no re-scoring between drops), as the
// reference code does. Expert Drop works on any model: compression/expert_drop.h.
#include <moeprune/compression/expert_drop.h>
#include <moeprune/layers/moe_view.h>
#include <moeprune/models/vision/vision_transformer.h>

#include <torch/arg.h>

#include <cstdint>
#include <map>
#include <vector>

namespace moeprune::compression {

/// Layer Drop scores: for each MoE block whose MoE sub-block is still there, the mean over
/// calibration tokens of cos(h, h + MoE(LN(h))), h the residual stream entering the sub-block.
std::map<int64_t, double> moe_layer_similarity(VisionTransformer& model,
                                               const CalibrationData& data);

/// Layer Drop: removes the MoE sub-blocks of the `n` MoE blocks with the highest
/// moe_layer_similarity (their attention stays). Returns the blocks, increasing.
std::vector<int64_t> layer_drop(VisionTransformer& model, const CalibrationData& data, int64_t n);

/// Block Drop scores: element i is the mean over calibration tokens of cos(h_i, h_{i+span}),
/// h_i the residual stream entering block i (h_depth: the last block's output); depth - span + 1
/// entries. Blocks already dropped score as the identity they now are.
std::vector<double> block_similarity(VisionTransformer& model, const CalibrationData& data,
                                     int64_t span = 1);

/// Block Drop: removes `n` whole blocks, either the n with the highest cos(h_i, h_{i+1})
/// (discrete) or the run i..i+n-1 with the highest cos(h_i, h_{i+n}) (consecutive; the reference
/// code scores a run one block longer than it drops, this scores the run it drops). Blocks
/// already dropped are not counted. Returns the blocks, increasing.
std::vector<int64_t> block_drop(VisionTransformer& model, const CalibrationData& data, int64_t n,
                                bool consecutive = false);

}  // namespace moeprune::compression
