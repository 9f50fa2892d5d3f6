#pragma once

// The architecture of a decoder-only causal language model with MoE blocks, as the families
// moeprune reads from Hugging Face (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-MoE,
// DeepSeek-V2/V3, GLM-4.5) share it: Llama-style attention (grouped-query, rotary position
// embedding, optional q/k RMSNorm) or DeepSeek's multi-head latent attention, RMSNorm before
// attention and MLP, SwiGLU dense MLPs and MoE blocks with optional shared experts.
#include <moeprune/layers/moe_layer.h>

#include <torch/arg.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moeprune::lm {

/// Where the RMSNorm on queries and keys sits (none in Mixtral, Qwen2-MoE and DeepSeek-MoE).
enum class QKNorm {
  kNone,
  kPerHead,  ///< over each head's head_dim features (Qwen3-MoE)
  kWhole,    ///< over the whole projection, heads * head_dim features (OLMoE)
};

/// YaRN's extension of the rotary embedding to longer contexts (rope_scaling {"type": "yarn"};
/// Peng et al. 2023, as transformers' modeling_rope_utils._compute_yarn_parameters computes it):
/// frequencies between the fast and slow correction dimensions are blended from interpolated
/// (divided by `factor`) and original ones, and cos/sin are scaled by the attention factor.
struct YarnScaling {
  TORCH_ARG(double, factor) = 1.0;
  /// The context the model was pre-trained on (0: the model's max_position_embeddings).
  TORCH_ARG(int64_t, original_max_position_embeddings) = 0;
  TORCH_ARG(double, beta_fast) = 32.0;
  TORCH_ARG(double, beta_slow) = 1.0;
  /// mscale and mscale_all_dim (0: not set) give the attention factor when it is not set:
  /// m(factor, mscale) / m(factor, mscale_all_dim), m(s, x) = 0.1 x ln s + 1 (1 for s <= 1).
  TORCH_ARG(double, mscale) = 0.0;
  TORCH_ARG(double, mscale_all_dim) = 0.0;
  /// Scale of cos and sin; 0: from mscale / mscale_all_dim as above.
  TORCH_ARG(double, attention_factor) = 0.0;
  /// Round the correction range outwards to whole dimensions.
  TORCH_ARG(bool, truncate) = true;
};

/// Multi-head latent attention (DeepSeek-V2 section 2.1; transformers' DeepseekV2Attention and
/// DeepseekV3Attention): queries from x or from a rank-q_lora_rank latent, keys and values from
/// one rank-kv_lora_rank latent, each head's query/key split into a part without position
/// (qk_nope_head_dim) and a rotary part (qk_rope_head_dim) whose key is shared by all heads.
struct LatentAttentionOptions {
  /// Rank of the query latent (q_a_proj, q_a_layernorm, q_b_proj); 0: q_proj from x.
  TORCH_ARG(int64_t, q_lora_rank) = 0;
  TORCH_ARG(int64_t, kv_lora_rank) = 512;
  TORCH_ARG(int64_t, qk_nope_head_dim) = 128;
  TORCH_ARG(int64_t, qk_rope_head_dim) = 64;
  TORCH_ARG(int64_t, v_head_dim) = 128;
  /// The latents' RMSNorm epsilon (transformers builds them with its default, 1e-6, whatever the
  /// config's rms_norm_eps).
  TORCH_ARG(double, norm_eps) = 1e-6;
};

struct AttentionOptions {
  AttentionOptions(int64_t hidden_size, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim)
      : hidden_size_(hidden_size),
        num_heads_(num_heads),
        num_kv_heads_(num_kv_heads),
        head_dim_(head_dim) {}
  TORCH_ARG(int64_t, hidden_size);
  TORCH_ARG(int64_t, num_heads);
  /// Key/value heads; num_heads / num_kv_heads query heads share each (grouped-query attention).
  TORCH_ARG(int64_t, num_kv_heads);
  TORCH_ARG(int64_t, head_dim);
  /// Biases on the q, k and v projections (Qwen2-MoE) and on the output projection.
  TORCH_ARG(bool, qkv_bias) = false;
  TORCH_ARG(bool, output_bias) = false;
  TORCH_ARG(QKNorm, qk_norm) = QKNorm::kNone;
  TORCH_ARG(double, rms_norm_eps) = 1e-6;
  /// Clamp q, k and v to [-clip_qkv, clip_qkv] after the projections (OLMoE); 0: no clamp.
  TORCH_ARG(double, clip_qkv) = 0.0;
  /// The rotary embedding's base (rope_theta).
  TORCH_ARG(double, rope_theta) = 10000.0;
  /// Features of each query/key head the rotary embedding turns, the first ones (GLM-4.5's
  /// partial_rotary_factor); 0: the whole head. With `latent`, qk_rope_head_dim is used.
  TORCH_ARG(int64_t, rotary_dim) = 0;
  /// Rotate features (2i, 2i + 1) together (DeepSeek-V2's complex rotation, DeepSeek-V3's
  /// rope_interleave) rather than i and i + d/2 (Llama's rotate_half).
  TORCH_ARG(bool, rope_interleaved) = false;
  /// Turn q and k in fp32 with fp32 angles, then cast back (DeepSeek-V2's apply_rotary_emb);
  /// otherwise in the model's dtype with angles cast to it (Llama's apply_rotary_pos_emb).
  TORCH_ARG(bool, rotary_in_fp32) = false;
  TORCH_ARG(std::optional<YarnScaling>, yarn);
  /// Multiplies q.k before the softmax; 0: 1 / sqrt(head_dim) (DeepSeek-V3 multiplies that by
  /// YaRN's mscale(factor, mscale_all_dim)^2).
  TORCH_ARG(double, softmax_scale) = 0.0;
  /// Multi-head latent attention instead of grouped-query projections; head_dim is then
  /// qk_nope_head_dim + qk_rope_head_dim and num_kv_heads equals num_heads.
  TORCH_ARG(std::optional<LatentAttentionOptions>, latent);

 public:
  /// Features of each value head (v_head_dim with `latent`, head_dim otherwise).
  int64_t value_dim() const { return latent_ ? latent_->v_head_dim() : head_dim_; }
  /// Features the rotary embedding turns (see rotary_dim).
  int64_t rotary_width() const {
    return latent_ ? latent_->qk_rope_head_dim() : (rotary_dim_ > 0 ? rotary_dim_ : head_dim_);
  }
};

struct CausalLMOptions {
  CausalLMOptions(int64_t vocab_size, int64_t hidden_size, int64_t num_layers,
                  AttentionOptions attention)
      : vocab_size_(vocab_size),
        hidden_size_(hidden_size),
        num_layers_(num_layers),
        attention_(std::move(attention)) {}

  /// The Hugging Face family the model saves as (config.json's model_type).
  TORCH_ARG(std::string, model_type) = "mixtral";
  TORCH_ARG(int64_t, vocab_size);
  TORCH_ARG(int64_t, hidden_size);
  TORCH_ARG(int64_t, num_layers);
  TORCH_ARG(AttentionOptions, attention);
  TORCH_ARG(double, rms_norm_eps) = 1e-6;
  TORCH_ARG(int64_t, max_position_embeddings) = 4096;
  /// The LM head is the token embedding (no lm_head weight of its own).
  TORCH_ARG(bool, tie_word_embeddings) = false;
  /// Width and activation of the dense SwiGLU MLPs (layers without experts; shared experts use
  /// the activation too).
  TORCH_ARG(int64_t, intermediate_size) = 0;
  TORCH_ARG(ExpertActivation, activation) = ExpertActivation::kSilu;
  /// Per decoder layer: true for a MoE block, false for a dense MLP (num_layers entries).
  TORCH_ARG(std::vector<bool>, moe_layers);
  /// The MoE blocks' routed experts and routing (required when any layer is MoE).
  TORCH_ARG(std::optional<MoELayerOptions>, moe);
  /// Width of the shared expert every token passes through beside the routed ones (Qwen2-MoE's
  /// shared_expert, DeepSeek's n_shared_experts * moe_intermediate_size); 0: none.
  TORCH_ARG(int64_t, shared_expert_size) = 0;
  /// Scale the shared expert's output by sigmoid(x . w) (Qwen2-MoE's shared_expert_gate).
  TORCH_ARG(bool, shared_expert_gate) = false;
  /// Layer Drop (models/lm/trimming.h): MoE layers whose MoE block (routed and shared experts)
  /// is removed; the decoder layer keeps its attention, h + Attention(RMSNorm(h)). Increasing.
  TORCH_ARG(std::vector<int64_t>, dropped_mlp_layers);

  /// The config.json the model was read from (JSON text, empty for a new model): saving keeps its
  /// keys moeprune does not model (token ids, dtype, ...).
  TORCH_ARG(std::string, hf_config) = "";

 public:
  /// Throws naming the first inconsistent field.
  void validate() const;
};

}  // namespace moeprune::lm
