#pragma once

// One block of a Switch Transformers stack (SwitchTransformersBlock): pre-norm self-attention,
// cross-attention over the encoder in the decoder, and a feed-forward block that is dense (T5's
// DenseActDense) or a MoE layer (top-1, capacity per sequence), each added to the residual.
#include <moeprune/layers/moe_layer.h>
#include <moeprune/models/seq2seq/layer_norm.h>
#include <moeprune/models/seq2seq/options.h>
#include <moeprune/models/seq2seq/relative_attention.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <optional>

namespace moeprune::seq2seq {

/// wo(dropout(act(wi x))), no biases (SwitchTransformersDenseActDense).
class DenseActDenseImpl : public torch::nn::Cloneable<DenseActDenseImpl> {
 public:
  DenseActDenseImpl(int64_t d_model, int64_t d_ff, ExpertActivation activation, double dropout);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);

  int64_t d_model, d_ff;
  ExpertActivation activation;
  double dropout;
  torch::nn::Linear wi{nullptr}, wo{nullptr};
};
TORCH_MODULE(DenseActDense);

/// The routing of one MoE layer call, kept for the model's router losses.
struct SparseCall {
  RoutingPlan plan;
  torch::Tensor router_logits;  ///< [B, S, E] float32, from the (jittered) router input
  /// [B, S, K] int64: each slot's expert after the capacity cut, as transformers' one-hot
  /// router mask gives it: the router's expert id, or 0 for a slot dropped at capacity (the
  /// argmax of an all-zero row). A slot routed to a removed expert keeps its id (transformers
  /// runs such a zeroed expert).
  torch::Tensor selected;
};

/// x + dropout(FF(norm(x))), FF dense or MoE (SwitchTransformersLayerFF).
class SwitchFeedForwardImpl : public torch::nn::Cloneable<SwitchFeedForwardImpl> {
 public:
  SwitchFeedForwardImpl(const SwitchTransformerOptions& options, bool sparse);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// `call` (optional) receives the MoE layer's routing.
  torch::Tensor forward(const torch::Tensor& hidden, SparseCall* call = nullptr);
  bool sparse() const { return !moe.is_empty(); }
  /// Replaces the MoE layer (one read from a checkpoint).
  void set_moe(MoELayer layer);

  SwitchTransformerOptions options;
  bool is_sparse;
  T5LayerNorm layer_norm{nullptr};
  DenseActDense mlp{nullptr};
  MoELayer moe{nullptr};
};
TORCH_MODULE(SwitchFeedForward);

/// Cached keys and values of one decoder block: self-attention grows by the decoded tokens,
/// cross-attention holds the encoder's projections once.
struct BlockCache {
  torch::Tensor self_keys, self_values;    ///< [B, H, past, d_kv]
  torch::Tensor cross_keys, cross_values;  ///< [B, H, S_enc, d_kv]
};

class SwitchBlockImpl : public torch::nn::Cloneable<SwitchBlockImpl> {
 public:
  /// Block `index` of the encoder (decoder = false) or decoder.
  SwitchBlockImpl(const SwitchTransformerOptions& options, bool decoder, int64_t index);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// `self_bias`: position bias + mask of the self-attention [1 or B, H, Q, K]; the decoder
  /// also takes the encoder output [B, S, d] and the cross-attention mask [B, 1, 1, S].
  /// With `cache`, the decoder's queries continue the cached tokens and are appended.
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& self_bias,
                        const torch::Tensor& encoder_hidden = {},
                        const torch::Tensor& cross_bias = {}, BlockCache* cache = nullptr,
                        SparseCall* call = nullptr);

  SwitchTransformerOptions options;
  bool decoder;
  int64_t index;
  T5LayerNorm self_norm{nullptr};  ///< layer.0.layer_norm
  RelativeAttention self_attention{nullptr};
  T5LayerNorm cross_norm{nullptr};  ///< layer.1.layer_norm (decoder)
  RelativeAttention cross_attention{nullptr};
  SwitchFeedForward feed_forward{nullptr};
};
TORCH_MODULE(SwitchBlock);

}  // namespace moeprune::seq2seq
