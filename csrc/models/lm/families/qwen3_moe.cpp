// Qwen3-MoE (modeling_qwen3_moe.py) = Qwen2-MoE + per-head q/k RMSNorm + one attention_bias for
// q, k, v and o - the shared expert.
#include "models/lm/families/qwen2_moe.h"

#include <memory>

namespace moeprune::lm {
namespace {

class Qwen3Moe : public Qwen2Moe {
 public:
  std::string model_type() const override { return "qwen3_moe"; }
  std::string architecture() const override { return "Qwen3MoeForCausalLM"; }
  std::string summary() const override {
    return architecture() +
           "; MoE unless in mlp_only_layers, every decoder_sparse_step; softmax top-k "
           "(norm_topk_prob); SwiGLU experts; q/k norm per head";
  }
  std::string shared_expert() const override { return ""; }

  void read_attention(const hf::Config& config, AttentionOptions& attention) const override {
    MlpExpertsFamily::read_attention(config, attention);
    attention.qk_norm(QKNorm::kPerHead);
  }
  void read_model(const hf::Config& config, CausalLMOptions& o) const override {
    o.intermediate_size(config.integer("intermediate_size", 0));
  }
  void write_attention(const AttentionOptions& a, nlohmann::ordered_json& c) const override {
    MlpExpertsFamily::write_attention(a, c);
  }
  void write_shared_experts(const CausalLMOptions& o, nlohmann::ordered_json& c) const override {
    MlpExpertsFamily::write_shared_experts(o, c);
  }
};

}  // namespace

std::unique_ptr<Family> make_qwen3_moe() {
  return std::make_unique<Qwen3Moe>();
}

}  // namespace moeprune::lm
