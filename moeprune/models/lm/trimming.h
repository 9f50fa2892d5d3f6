#pragma once

// Layer Drop and Block Drop for language models (He et al. 2024, "Demystifying the Compression of
// Mixture-of-Experts Through a Unified Framework", section 3; DaizeDong/Unified-MoE-Compression,
// src/llmtuner/compression/prune/layer_drop.py and block_drop.py): Layer Drop removes whole MoE
// blocks, Block Drop whole decoder layers, each chosen on calibration tokens by how little it
// changes the residual stream (compression/residual_similarity.h). Both score the model as it
// is, in one pass, as the reference does. Expert Drop, merging and low rank work through the
// MoE view (models/lm/moe_view.h).
#include <moeprune/layers/moe_view.h>
#include <moeprune/models/lm/causal_lm.h>

#include <cstdint>
#include <map>
#include <vector>

namespace moeprune::compression {

/// Layer Drop scores: for each decoder layer with a MoE block, the mean over calibration tokens
/// of cos(h, h + MoE(RMSNorm(h))), h the residual stream after the layer's attention. `tokens`:
/// batches of token ids [B, S].
std::map<int64_t, double> moe_layer_similarity(lm::CausalLM& model, const CalibrationData& tokens);

/// Layer Drop: removes the MoE blocks of the `n` layers with the highest moe_layer_similarity
/// (CausalLMImpl::drop_mlp; their attention stays). Returns the layers, increasing. Dense MLPs
/// are never dropped (the reference drops MoE layers only).
std::vector<int64_t> layer_drop(lm::CausalLM& model, const CalibrationData& tokens, int64_t n);

/// Block Drop scores: element i is the mean over calibration tokens of cos(h_i, h_{i+span}),
/// h_i the residual stream entering decoder layer i (h_L: the last layer's output, before the
/// final norm); num_layers - span + 1 entries.
std::vector<double> block_similarity(lm::CausalLM& model, const CalibrationData& tokens,
                                     int64_t span = 1);

/// Block Drop: removes `n` decoder layers, either the n with the highest cos(h_i, h_{i+1})
/// (discrete) or the run i..i+n-1 with the highest cos(h_i, h_{i+n}) (consecutive). The model
/// keeps its other layers renumbered (CausalLMImpl::remove_layers), so it saves as a smaller
/// model of its family. Returns the removed layers' indices before the removal, increasing.
std::vector<int64_t> block_drop(lm::CausalLM& model, const CalibrationData& tokens, int64_t n,
                                bool consecutive = false);

}  // namespace moeprune::compression
