// Mixtral (transformers' modeling_mixtral.py, configuration_mixtral.py): every decoder layer's
// MLP is a sparse MoE block, softmax top-k always renormalised, SwiGLU experts, no attention
// biases. Two layouts: the hub's per-expert block_sparse_moe.experts.{j}.w1/w2/w3 [out, in], and
// transformers 5.x's fused mlp.experts.gate_up_proj [E, 2F, d] (gate first) / down_proj [E, d, F].
#include "models/lm/families/family.h"

#include <torch/torch.h>

#include <memory>

namespace moeprune::lm {
namespace {

class Mixtral : public Family {
 public:
  std::string model_type() const override { return "mixtral"; }
  std::string architecture() const override { return "MixtralForCausalLM"; }
  std::string summary() const override {
    return "MixtralForCausalLM; every layer MoE (block_sparse_moe, or mlp when fused); softmax "
           "top-k renormalised; SwiGLU experts w1/w2/w3";
  }
  FamilyDefaults defaults() const override { return {1e-5, 1e6, 0.001}; }
  std::string experts_key() const override { return "num_local_experts"; }
  std::string width_key() const override { return "intermediate_size"; }
  std::string moe_block() const override { return "block_sparse_moe"; }

  std::vector<hf::MoELayerRef> describe(const hf::Config& config,
                                        const safetensors::Checkpoint& checkpoint,
                                        hf::ModelInfo& info) const override {
    info.d_model = config.integer("hidden_size");
    info.hidden_dim = config.integer("intermediate_size");
    info.num_experts = config.integer("num_local_experts");
    info.top_k = config.integer("num_experts_per_tok");
    info.router_jitter = config.number("router_jitter_noise", 0.0);
    info.activation = hf::detail::activation_of(config.text("hidden_act", "silu"), config.path());
    const int64_t layers = config.integer("num_hidden_layers");
    const int64_t E = info.num_experts, d = info.d_model, F = info.hidden_dim;
    std::vector<hf::MoELayerRef> refs;
    for (int64_t i = 0; i < layers; ++i) {
      const auto base = "model.layers." + std::to_string(i);
      hf::MoELayerRef ref;
      ref.decoder_layer = i;
      ref.num_experts = E;
      if (checkpoint.contains(base + ".block_sparse_moe.gate.weight")) {
        ref.prefix = base + ".block_sparse_moe";
      } else if (checkpoint.contains(base + ".mlp.gate.weight")) {
        ref.prefix = base + ".mlp";
        ref.fused = true;
      } else {
        TORCH_CHECK(false, checkpoint.directory(), ": layer ", i, " has no router (neither '", base,
                    ".block_sparse_moe.gate.weight' nor '", base, ".mlp.gate.weight')");
      }
      ref.router = ref.prefix + ".gate.weight";
      hf::detail::expect_shape(checkpoint, ref.router, {E, d}, config.path());
      hf::detail::expect_gated_experts(checkpoint, ref, d, F, *this, config.path());
      refs.push_back(std::move(ref));
    }
    return refs;
  }

  std::vector<std::string> expert_tensors(const hf::MoELayerRef& ref, int64_t j) const override {
    if (ref.fused) {
      return hf::detail::fused_gated_experts(ref);
    }
    const auto e = expert_stem(ref) + std::to_string(j);
    return {e + ".w1.weight", e + ".w2.weight", e + ".w3.weight"};
  }

  std::string expert_stem(const hf::MoELayerRef& ref) const override {
    return ref.prefix + ".experts.";
  }

  MoELayerOptions layer_options(const hf::ModelInfo& info, const hf::MoELayerRef& ref,
                                int64_t hidden_dim) const override {
    auto o = MoELayerOptions::preset("top_k_gated", info.d_model, hidden_dim, ref.num_experts);
    o.routing().k(info.top_k).renormalize(true);
    o.router_as<TopKRouterConfig>().jitter(info.router_jitter);
    o.activation(info.activation);
    return o;
  }

  void load_experts(const safetensors::Checkpoint& checkpoint, const hf::ModelInfo& info,
                    const hf::MoELayerRef& ref, ExpertBank& bank) const override {
    hf::detail::load_gated_experts(checkpoint, ref, info.hidden_dim, bank, *this);
  }

  // Mixtral always renormalises over the experts present; no key to write.
  void write_cut_config(nlohmann::ordered_json& /*config*/) const override {}

  void read_attention(const hf::Config& config, AttentionOptions& /*attention*/) const override {
    // MistralConfig's sliding_window: transformers' Mixtral masks with it when set.
    if (config.is_set("sliding_window")) {
      detail::refuse(config, "sliding_window", "sliding-window attention");
    }
    if (config.is_set("clip_qkv")) {
      detail::refuse(config, "clip_qkv", "only OLMoE clips q, k and v");
    }
    detail::partial_rotary_factor(config, 1.0, false);
  }
  void write_attention(const AttentionOptions& /*attention*/,
                       nlohmann::ordered_json& /*c*/) const override {}
  void write_routing(const MoELayerOptions& /*moe*/, nlohmann::ordered_json& /*c*/) const override {
  }
  void write_moe_layers(const CausalLMOptions& o, nlohmann::ordered_json& /*c*/) const override {
    const auto dense = detail::dense_layers(o.moe_layers());
    TORCH_CHECK(dense.empty(), "save: every mixtral layer is MoE; layer ",
                dense.empty() ? 0 : dense[0], " is dense");
  }
};

}  // namespace

std::unique_ptr<Family> make_mixtral() {
  return std::make_unique<Mixtral>();
}

}  // namespace moeprune::lm
