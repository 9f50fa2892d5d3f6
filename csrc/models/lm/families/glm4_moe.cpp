// GLM-4.5 (transformers' modeling_glm4_moe.py, configuration_glm4_moe.py) = DeepSeek-V3's MoE
// layers (Glm4MoeTopkRouter is DeepseekV3TopkRouter) with grouped-query attention instead of
// latent attention: q/k/v biases (attention_bias), optional per-head q/k norm (use_qk_norm),
// rotary on the first partial_rotary_factor (default 0.5) of each head.
#include "models/lm/families/deepseek_v3.h"

#include <c10/util/Exception.h>

#include <memory>

namespace moeprune::lm {
namespace {

class Glm4Moe : public DeepSeekV3 {
 public:
  std::string model_type() const override { return "glm4_moe"; }
  std::string architecture() const override { return "Glm4MoeForCausalLM"; }
  std::string summary() const override {
    return architecture() +
           "; first_k_dense_replace dense, then MoE; sigmoid with correction bias, groups by "
           "top-two sum, scaled; SwiGLU experts; shared experts; partial rotary, q/k/v biases";
  }
  FamilyDefaults defaults() const override { return {1e-5, 10000.0, 0.0}; }

  void read_attention(const hf::Config& config, AttentionOptions& attention) const override {
    attention.qkv_bias(config.flag("attention_bias", false)).output_bias(false);
    if (config.flag("use_qk_norm", false)) {
      attention.qk_norm(QKNorm::kPerHead);
    }
    if (config.is_set("clip_qkv")) {
      detail::refuse(config, "clip_qkv", "only OLMoE clips q, k and v");
    }
    const double partial = detail::partial_rotary_factor(config, 0.5, true);
    if (partial < 1.0) {
      // int(head_dim * partial_rotary_factor), as modeling_rope_utils computes the rotary width.
      attention.rotary_dim(
          static_cast<int64_t>(static_cast<double>(attention.head_dim()) * partial));
    }
  }
  void write_rotary(const AttentionOptions& a, nlohmann::ordered_json& c) const override {
    c["partial_rotary_factor"] =
        static_cast<double>(a.rotary_width()) / static_cast<double>(a.head_dim());
    c["use_qk_norm"] = a.qk_norm() == QKNorm::kPerHead;
  }
  void write_attention(const AttentionOptions& a, nlohmann::ordered_json& c) const override {
    TORCH_CHECK(!a.output_bias(),
                "save: glm4_moe's attention_bias covers q, k and v; the model has an output "
                "projection bias");
    c["attention_bias"] = a.qkv_bias();
  }

 protected:
  int64_t first_dense_default() const override { return 1; }
  GroupDefaults group_defaults() const override { return {}; }
};

}  // namespace

std::unique_ptr<Family> make_glm4_moe() {
  return std::make_unique<Glm4Moe>();
}

}  // namespace moeprune::lm
