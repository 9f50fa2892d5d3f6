#pragma once

// The configuration of a Switch Transformers encoder-decoder (transformers'
// SwitchTransformersConfig, the keys of a hub config.json): a T5 with relative position buckets
// whose feed-forward block is a MoE layer in every `*_sparse_step`-th block.
#include <moeprune/layers/moe_layer.h>

#include <torch/arg.h>

#include <cstdint>
#include <string>

namespace moeprune::seq2seq {

struct SwitchTransformerOptions {
  /// google/switch-base-8's sizes; `moe` is the "switch" preset with its 8 experts.
  SwitchTransformerOptions();

  TORCH_ARG(int64_t, vocab_size) = 32128;
  TORCH_ARG(int64_t, d_model) = 768;
  /// Width of one attention head (d_kv); inner attention width = num_heads * d_kv.
  TORCH_ARG(int64_t, d_kv) = 64;
  /// Width of the dense feed-forward blocks (the experts' width is moe.hidden_dim).
  TORCH_ARG(int64_t, d_ff) = 2048;
  TORCH_ARG(int64_t, num_heads) = 12;
  TORCH_ARG(int64_t, num_layers) = 12;
  TORCH_ARG(int64_t, num_decoder_layers) = 12;
  /// Block i of the encoder is sparse when i % step == 1, or every block when step == 1; 0: none
  /// (SwitchTransformersStack).
  TORCH_ARG(int64_t, encoder_sparse_step) = 2;
  TORCH_ARG(int64_t, decoder_sparse_step) = 2;
  TORCH_ARG(int64_t, relative_attention_num_buckets) = 32;
  TORCH_ARG(int64_t, relative_attention_max_distance) = 128;
  TORCH_ARG(double, layer_norm_epsilon) = 1e-6;
  /// Dropout after the embedding, on attention weights, on every residual branch, inside the
  /// dense feed-forward blocks and after the final norms, while training. (The experts have no
  /// inner dropout in moeprune; transformers drops after their activation too.)
  TORCH_ARG(double, dropout_rate) = 0.1;
  /// The dense blocks' activation (dense_act_fn).
  TORCH_ARG(ExpertActivation, activation) = ExpertActivation::kRelu;
  /// LM head = the shared embedding, its input scaled by d_model^-0.5 (T5's convention).
  TORCH_ARG(bool, tie_word_embeddings) = true;
  TORCH_ARG(int64_t, pad_token_id) = 0;
  TORCH_ARG(int64_t, eos_token_id) = 1;
  /// First decoder input; shift_right puts it before the labels.
  TORCH_ARG(int64_t, decoder_start_token_id) = 0;
  /// Weights of the router z-loss and load-balancing loss added to the training loss.
  TORCH_ARG(double, router_z_loss_coef) = 0.001;
  TORCH_ARG(double, router_aux_loss_coef) = 0.001;
  /// The MoE layers' options (d_model and hidden_dim follow the model's; num_experts,
  /// expert_capacity per sequence, jitter).
  TORCH_ARG(MoELayerOptions, moe);

 public:
  /// Whether block `index` of the decoder (or encoder) is sparse.
  bool is_sparse(bool decoder, int64_t index) const;
  /// Number of sparse blocks in the encoder (decoder = false) or decoder.
  int64_t num_sparse(bool decoder) const;
  /// Checks every size and id; throws naming the option.
  void validate() const;
};

}  // namespace moeprune::seq2seq
