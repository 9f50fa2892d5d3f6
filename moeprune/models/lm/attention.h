#pragma once

#include <moeprune/models/lm/kv_cache.h>
#include <moeprune/models/lm/options.h>
#include <moeprune/models/lm/rms_norm.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace moeprune::lm {

/// cos and sin of the rotary embedding for a run of positions, [S, head_dim] each in the
/// model's dtype (modeling_llama.py LlamaRotaryEmbedding, default rope type: inv_freq =
/// theta^(-2i/d) in fp32, the angles duplicated over both halves of the head).
struct RotaryAngles {
  torch::Tensor cos, sin;
};
RotaryAngles rotary_angles(int64_t start, int64_t length, int64_t head_dim, double theta,
                           torch::ScalarType dtype, const torch::Device& device);

/// Grouped-query self-attention with rotary positions and a causal mask, through
/// at::scaled_dot_product_attention. Parameter names follow Hugging Face's (q_proj, k_proj,
/// v_proj, o_proj, q_norm, k_norm).
class AttentionImpl : public torch::nn::Cloneable<AttentionImpl> {
 public:
  explicit AttentionImpl(AttentionOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// x [B, S, hidden] at positions [cache->length(), + S) (from 0 without a cache); `layer` is
  /// this layer's slot in the cache.
  torch::Tensor forward(const torch::Tensor& x, const RotaryAngles& angles,
                        KVCache* cache = nullptr, int64_t layer = 0);

  AttentionOptions options;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};
};
TORCH_MODULE(Attention);

}  // namespace moeprune::lm
