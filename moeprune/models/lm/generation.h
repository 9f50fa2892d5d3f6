#pragma once

#include <moeprune/models/lm/causal_lm.h>

#include <torch/arg.h>

#include <cstdint>
#include <functional>

namespace moeprune::lm {

struct GenerationOptions {
  TORCH_ARG(int64_t, max_new_tokens) = 32;
  /// 0: greedy (the most probable token, ties to the lower id); > 0: sample from
  /// softmax(logits / temperature).
  TORCH_ARG(double, temperature) = 0.0;
  /// Nucleus sampling: sample among the most probable tokens whose probabilities sum to top_p
  /// (at least one token); 1: no cut.
  TORCH_ARG(double, top_p) = 1.0;
  TORCH_ARG(uint64_t, seed) = 0;
  /// Stop a sequence at this token (-1: never); finished sequences are padded with it.
  TORCH_ARG(int64_t, eos_token_id) = -1;
  /// Decode with a KV cache (one token per step); false runs the whole sequence every step.
  TORCH_ARG(bool, use_cache) = true;
};

/// Called after each step with the new tokens [B] (for streaming output).
using TokenCallback = std::function<void(const torch::Tensor& tokens)>;

/// Continues `prompt` [B, P] (int64, every row the same length) by up to max_new_tokens tokens;
/// returns [B, P + N], N <= max_new_tokens (fewer when every sequence ended at eos). Runs in
/// evaluation mode without gradients.
torch::Tensor generate(CausalLM& model, const torch::Tensor& prompt,
                       const GenerationOptions& options = {}, const TokenCallback& on_tokens = {});

}  // namespace moeprune::lm
