#pragma once

// What a compressed language model costs: the parameters it stores and the work of its forward
// pass per token, so compressions of a CausalLM can be compared at matched budgets (the
// language-model counterpart of train/model_cost.h).
#include <moeprune/models/lm/causal_lm.h>

#include <cstdint>

namespace moeprune::compression {

/// Parameters the model stores: every parameter, except that the sparse parts of factorised
/// experts count only their kept output units (the pruned ones are zero and need not be stored).
int64_t stored_parameters(const lm::CausalLM& model);

/// Floating-point operations (2 per multiply-add) per token of a forward pass over `input_ids`
/// [B, S], averaged over the B * S positions: every projection by its weight's shape (q, k, v,
/// o, dense MLPs, shared experts and their gates, the LM head), attention scores and the weighted
/// sum over the p + 1 positions a token at position p sees, each MoE layer's router, and the rows
/// its experts really computed on these tokens (counted while the model runs, so pruned, merged
/// and low-rank experts count as what they cost). Norms, rotary, softmax and activations are left
/// out. Runs the model in evaluation mode without gradients.
double flops_per_token(lm::CausalLM& model, const torch::Tensor& input_ids);

}  // namespace moeprune::compression
