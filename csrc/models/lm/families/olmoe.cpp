// OLMoE (transformers' modeling_olmoe.py, configuration_olmoe.py): every layer MoE, softmax
// top-k (norm_topk_prob), SwiGLU experts of intermediate_size, q and k RMSNorm over the whole
// projection, q/k/v clipped to [-clip_qkv, clip_qkv] when set.
#include "models/lm/families/mlp_experts.h"

#include <c10/util/Exception.h>

#include <memory>

namespace moeprune::lm {
namespace {

class Olmoe : public MlpExpertsFamily {
 public:
  std::string model_type() const override { return "olmoe"; }
  std::string architecture() const override { return "OlmoeForCausalLM"; }
  std::string summary() const override {
    return architecture() +
           "; every layer MoE; softmax top-k (norm_topk_prob); SwiGLU experts; q/k norm over "
           "the projection, clip_qkv";
  }
  FamilyDefaults defaults() const override { return {1e-5, 10000.0, 0.01}; }
  std::string experts_key() const override { return "num_experts"; }
  std::string width_key() const override { return "intermediate_size"; }

  void read_attention(const hf::Config& config, AttentionOptions& attention) const override {
    const bool bias = config.flag("attention_bias", false);
    attention.qkv_bias(bias).output_bias(bias).qk_norm(QKNorm::kWhole);
    if (config.is_set("clip_qkv")) {
      attention.clip_qkv(config.number("clip_qkv", 0.0));
    }
    detail::partial_rotary_factor(config, 1.0, false);
  }
  void write_attention(const AttentionOptions& a, nlohmann::ordered_json& c) const override {
    MlpExpertsFamily::write_attention(a, c);
    c["clip_qkv"] =
        a.clip_qkv() > 0.0 ? nlohmann::ordered_json(a.clip_qkv()) : nlohmann::ordered_json();
  }
  void write_moe_layers(const CausalLMOptions& o, nlohmann::ordered_json& /*c*/) const override {
    const auto dense = detail::dense_layers(o.moe_layers());
    TORCH_CHECK(dense.empty(), "save: every olmoe layer is MoE; layer ",
                dense.empty() ? 0 : dense[0], " is dense");
  }

 protected:
  bool is_moe_layer(const hf::Config& /*config*/, int64_t /*i*/) const override { return true; }
};

}  // namespace

std::unique_ptr<Family> make_olmoe() {
  return std::make_unique<Olmoe>();
}

}  // namespace moeprune::lm
