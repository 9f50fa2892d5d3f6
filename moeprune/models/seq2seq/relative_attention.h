#pragma once

// T5 attention (transformers' SwitchTransformersAttention / T5Attention): q, k, v, o without
// biases, no 1/sqrt(d) scaling of the scores, and a learned bias per head and relative-position
// bucket that the first block of a stack computes and every block of that stack adds.
#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <cstdint>

namespace moeprune::seq2seq {

/// The bucket of each relative position (key position - query position), Mesh TensorFlow's
/// scheme as SwitchTransformersAttention._relative_position_bucket computes it: half the buckets
/// (all of them when not bidirectional, where keys after the query share bucket 0) hold exact
/// distances below num_buckets / 4 (/ 2), the rest grow logarithmically up to max_distance.
torch::Tensor relative_position_bucket(const torch::Tensor& relative_position, bool bidirectional,
                                       int64_t num_buckets, int64_t max_distance);

struct RelativeAttentionOptions {
  RelativeAttentionOptions(int64_t d_model, int64_t d_kv, int64_t num_heads)
      : d_model_(d_model), d_kv_(d_kv), num_heads_(num_heads) {}
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, d_kv);
  TORCH_ARG(int64_t, num_heads);
  /// Holds the relative_attention_bias table (the first self-attention of a stack).
  TORCH_ARG(bool, has_relative_bias) = false;
  /// Encoder: true; decoder: false (keys after the query share one bucket, masked anyway).
  TORCH_ARG(bool, bidirectional) = true;
  TORCH_ARG(int64_t, num_buckets) = 32;
  TORCH_ARG(int64_t, max_distance) = 128;
  TORCH_ARG(double, dropout) = 0.0;
};

class RelativeAttentionImpl : public torch::nn::Cloneable<RelativeAttentionImpl> {
 public:
  explicit RelativeAttentionImpl(RelativeAttentionOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// The position bias [1, H, query_length, key_length] of queries at positions query_start ...
  /// against keys 0 ... key_length - 1, in the table's dtype. Needs has_relative_bias.
  torch::Tensor compute_bias(int64_t query_start, int64_t query_length, int64_t key_length) const;
  /// Keys or values of `states` [B, S, d]: [B, H, S, d_kv].
  torch::Tensor project_keys(const torch::Tensor& states);
  torch::Tensor project_values(const torch::Tensor& states);
  /// Attention of `hidden` [B, Q, d] over `keys` and `values` [B, H, K, d_kv], with `bias`
  /// (position bias plus additive mask, broadcast to [B, H, Q, K]) added to the scores.
  /// Returns [B, Q, d].
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& keys,
                        const torch::Tensor& values, const torch::Tensor& bias);

  RelativeAttentionOptions options;
  torch::nn::Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
  torch::nn::Embedding relative_attention_bias{nullptr};
};
TORCH_MODULE(RelativeAttention);

}  // namespace moeprune::seq2seq
