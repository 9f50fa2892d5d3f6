#pragma once

#include <moeprune/models/lm/kv_cache.h>
#include <moeprune/models/lm/options.h>
#include <moeprune/models/lm/rms_norm.h>
#include <moeprune/models/lm/rotary.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace moeprune::lm {

/// Causal self-attention with rotary positions through at::scaled_dot_product_attention, its
/// queries, keys and values from one of two projection schemes:
/// - grouped-query (Llama and the MoE families after it): q_proj, k_proj, v_proj, optional
///   q/k RMSNorm, rotary over the whole head or its first rotary_dim features (GLM-4.5);
/// - multi-head latent (DeepSeek-V2/V3, options.latent): q_proj or q_a_proj -> q_a_layernorm ->
///   q_b_proj; kv_a_proj_with_mqa gives a key/value latent and one shared rotary key part,
///   kv_a_layernorm -> kv_b_proj expands the latent into every head's key part and value.
/// Parameter names follow Hugging Face's; the cache holds the expanded keys and values as
/// transformers' does.
class AttentionImpl : public torch::nn::Cloneable<AttentionImpl> {
 public:
  explicit AttentionImpl(AttentionOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// x [B, S, hidden] at positions [cache->length(), + S) (from 0 without a cache); `layer` is
  /// this layer's slot in the cache.
  torch::Tensor forward(const torch::Tensor& x, const RotaryAngles& angles,
                        KVCache* cache = nullptr, int64_t layer = 0);

  bool is_latent() const { return options.latent().has_value(); }

  AttentionOptions options;
  /// Grouped-query projections (q_proj also for latent attention without a query latent).
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};
  /// Latent attention.
  torch::nn::Linear q_a_proj{nullptr}, q_b_proj{nullptr}, kv_a_proj_with_mqa{nullptr},
      kv_b_proj{nullptr};
  RMSNorm q_a_layernorm{nullptr}, kv_a_layernorm{nullptr};

 private:
  struct QKV {
    torch::Tensor q, k, v;  ///< [B, heads, S, *] with rotary positions applied
  };
  QKV grouped_qkv(const torch::Tensor& x, const RotaryAngles& angles);
  QKV latent_qkv(const torch::Tensor& x, const RotaryAngles& angles);
};
TORCH_MODULE(Attention);

}  // namespace moeprune::lm
