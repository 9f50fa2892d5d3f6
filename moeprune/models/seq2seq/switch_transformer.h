#pragma once

// Switch Transformers as a whole model (transformers' SwitchTransformersForConditionalGeneration):
// a shared token embedding, a T5 encoder and decoder whose sparse blocks hold MoE layers, and an
// LM head tied to the embedding with its input scaled by d_model^-0.5. forward() gives the
// seq2seq logits and, with labels, the training loss as transformers computes it: cross-entropy
// over labels != -100 plus the router z-loss and load-balancing loss of each stack.
#include <moeprune/models/seq2seq/options.h>
#include <moeprune/models/seq2seq/switch_block.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <utility>
#include <vector>

namespace moeprune::seq2seq {

/// The router losses of one stack's sparse blocks (undefined when the stack has none).
struct RouterLosses {
  torch::Tensor z_loss;    ///< mean over the stack's routed tokens of logsumexp(logits)^2
  torch::Tensor aux_loss;  ///< Switch load balancing, E^2 * mean_e(f_e * P_e)
};

/// Router z-loss and load-balancing loss over `calls` (one stack's MoE layer calls), as
/// SwitchTransformersForConditionalGeneration computes them: the layers' [B, S, E] fp32 logits
/// are concatenated along the sequence, z = mean(logsumexp^2); the load-balancing loss takes
/// f_e = the share of each sequence's tokens whose capacity-masked one-hot selection is e (a
/// token dropped at capacity has an all-zero row, whose argmax is expert 0, so it counts for
/// expert 0, as in transformers) and P_e = the mean softmax probability, per sequence, and
/// returns E^2 * mean_{b,e}(f * P). Layers of different router widths (router columns dropped
/// by Expert Drop) are averaged per layer instead.
RouterLosses router_losses(const std::vector<SparseCall>& calls);

struct Seq2SeqOutput {
  torch::Tensor logits;  ///< [B, T, vocab] in the model's dtype
  /// With labels: lm_loss + router_z_loss_coef * (z_enc + z_dec) + router_aux_loss_coef *
  /// (aux_enc + aux_dec) (a stack without sparse blocks adds nothing).
  torch::Tensor loss;
  torch::Tensor lm_loss;  ///< mean cross-entropy over the labels that are not -100
  RouterLosses encoder_losses, decoder_losses;
};

/// Cached decoder state for generation: the encoder output and its mask, and each decoder
/// block's keys and values.
struct Seq2SeqCache {
  torch::Tensor encoder_hidden;  ///< [B, S, d]
  torch::Tensor cross_bias;      ///< [B, 1, 1, S] additive mask of the encoder's padding
  std::vector<BlockCache> blocks;
  int64_t length = 0;  ///< decoder tokens seen
};

class SwitchTransformerImpl : public torch::nn::Cloneable<SwitchTransformerImpl> {
 public:
  explicit SwitchTransformerImpl(SwitchTransformerOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// Logits of `decoder_input_ids` [B, T] given `input_ids` [B, S] (int64) and the encoder's
  /// `attention_mask` [B, S] (1 keep, 0 padding; optional). Without decoder_input_ids they are
  /// shift_right(labels). `labels` [B, T] (-100: ignored) adds the losses.
  Seq2SeqOutput forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                        const torch::Tensor& decoder_input_ids = {},
                        const torch::Tensor& labels = {});

  /// The encoder output [B, S, d]; `calls` (optional) receives its MoE layers' routing.
  torch::Tensor encode(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                       std::vector<SparseCall>* calls = nullptr);
  /// The decoder's final hidden states [B, T, d] (after the final norm). With `cache`, the
  /// tokens continue the cached ones and the cache's encoder output is used (`encoder_hidden`
  /// and `attention_mask` may then be empty).
  torch::Tensor decode(const torch::Tensor& decoder_input_ids, const torch::Tensor& encoder_hidden,
                       const torch::Tensor& attention_mask = {}, Seq2SeqCache* cache = nullptr,
                       std::vector<SparseCall>* calls = nullptr);
  /// LM head: hidden [..., d] -> logits [..., vocab].
  torch::Tensor logits(const torch::Tensor& hidden);
  /// A cache holding the encoder output of `input_ids` (evaluation, no grad inside).
  Seq2SeqCache start_cache(const torch::Tensor& input_ids,
                           const torch::Tensor& attention_mask = {});

  /// labels shifted one to the right behind decoder_start_token_id, -100 replaced by the pad id
  /// (SwitchTransformersPreTrainedModel._shift_right).
  torch::Tensor shift_right(const torch::Tensor& labels) const;

  /// The MoE layers in order, encoder then decoder, with their Hugging Face module paths
  /// ("encoder.block.1.layer.1.mlp", "decoder.block.1.layer.2.mlp").
  std::vector<std::pair<std::string, MoELayer>> moe_layers() const;
  SwitchBlock encoder_block(int64_t index) const;
  SwitchBlock decoder_block(int64_t index) const;

  SwitchTransformerOptions options;
  torch::nn::Embedding shared{nullptr};
  torch::nn::ModuleList encoder_blocks{nullptr}, decoder_blocks{nullptr};
  T5LayerNorm encoder_final_norm{nullptr}, decoder_final_norm{nullptr};
  torch::nn::Linear lm_head{nullptr};  ///< empty when tied to `shared`
};
TORCH_MODULE(SwitchTransformer);

}  // namespace moeprune::seq2seq
