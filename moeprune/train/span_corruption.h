#pragma once

// T5's span-corruption objective (Raffel et al. 2020, section 3.1.4; t5/data/preprocessors.py,
// span_corruption and random_spans_noise_mask): a fraction of a document's tokens, in spans of a
// given mean length, is replaced in the input by one sentinel per span; the target lists each
// sentinel followed by the tokens it replaced, then end of sequence. The pre-training task of
// Switch Transformers, and a seq2seq task any text can be turned into.
#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <random>
#include <vector>

namespace moeprune::data {

struct SpanCorruptionOptions {
  /// Fraction of the tokens that are corrupted (rounded to a whole number of tokens, at least 1).
  TORCH_ARG(double, noise_density) = 0.15;
  /// Mean length of a corrupted span.
  TORCH_ARG(double, mean_span_length) = 3.0;
  /// The id of sentinel i (T5: <extra_id_i>, ids vocab - 1 - i).
  TORCH_ARG(std::function<int64_t(int64_t)>, sentinel);
  /// Appended to every target (T5's </s>); -1: none.
  TORCH_ARG(int64_t, eos_token_id) = 1;
};

struct SpanCorruptionExample {
  std::vector<int64_t> input, target;
};

/// The mask of corrupted tokens of a document of `length` tokens (random_spans_noise_mask):
/// round(length * noise_density) tokens (clamped to [1, length - 1]) in round(noise /
/// mean_span_length) spans (at least 1), the noise and the kept tokens each split into that
/// many non-empty runs at random and interleaved, starting with kept tokens.
std::vector<bool> random_spans_noise_mask(int64_t length, const SpanCorruptionOptions& options,
                                          std::mt19937_64& rng);

/// Corrupts one document of at least 2 tokens.
SpanCorruptionExample span_corrupt(const std::vector<int64_t>& tokens,
                                   const SpanCorruptionOptions& options, std::mt19937_64& rng);

/// Pads examples into a batch: input_ids and attention_mask [B, S] (S = the longest input,
/// padded with pad_id, mask 0 there) and labels [B, T] (padded with -100, ignored by the loss).
struct Seq2SeqTensors {
  torch::Tensor input_ids, attention_mask, labels;
};
Seq2SeqTensors collate(const std::vector<SpanCorruptionExample>& examples, int64_t pad_id);

}  // namespace moeprune::data
