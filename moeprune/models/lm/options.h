#pragma once

// The architecture of a decoder-only causal language model with MoE blocks, as the families
// moeprune reads from Hugging Face (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-MoE) share it:
// Llama-style attention (grouped-query, rotary position embedding, optional q/k RMSNorm), RMSNorm
// before attention and MLP, SwiGLU dense MLPs and MoE blocks with optional shared experts.
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
  /// The rotary embedding's base (rope_theta); plain RoPE over the whole head.
  TORCH_ARG(double, rope_theta) = 10000.0;
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
