#pragma once

// Greedy decoding of a Switch Transformers model with a cache: the encoder runs once, then the
// decoder one token per step from decoder_start_token_id (transformers' generate with
// do_sample=False, num_beams=1).
#include <moeprune/models/seq2seq/switch_transformer.h>

#include <torch/arg.h>

#include <cstdint>

namespace moeprune::seq2seq {

struct GreedyOptions {
  TORCH_ARG(int64_t, max_new_tokens) = 32;
  /// Stop a sequence at this token (-1: never); finished sequences are padded with pad_token_id,
  /// and decoding ends when every sequence has finished.
  TORCH_ARG(int64_t, eos_token_id) = -1;
  /// Decode with the cache (one token per step); false reruns the decoder over the whole
  /// sequence every step (the reference the cache is checked against).
  TORCH_ARG(bool, use_cache) = true;
};

/// Decodes `input_ids` [B, S] (with its `attention_mask`, optional): returns [B, 1 + N], the
/// decoder start token then N <= max_new_tokens tokens, each the most probable (ties to the lower
/// id). Runs in evaluation mode without gradients; the model's mode is restored.
torch::Tensor greedy_generate(SwitchTransformer& model, const torch::Tensor& input_ids,
                              const torch::Tensor& attention_mask = {},
                              const GreedyOptions& options = {});

}  // namespace moeprune::seq2seq
