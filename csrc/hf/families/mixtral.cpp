// Mixtral (transformers' modeling_mixtral.py): every decoder layer's MLP is a sparse MoE block,
// softmax top-k renormalised, SwiGLU experts. Two layouts: the hub's per-expert
// block_sparse_moe.experts.{j}.w1/w2/w3 [out, in], and transformers 5.x's fused
// mlp.experts.gate_up_proj [E, 2F, d] (gate first) / down_proj [E, d, F].
#include "hf/family.h"

#include <torch/torch.h>

#include <memory>

namespace moeprune::hf {
namespace {

class Mixtral : public Family {
 public:
  std::vector<std::string> model_types() const override { return {"mixtral"}; }
  std::string experts_key() const override { return "num_local_experts"; }

  std::vector<MoELayerRef> describe(const Config& config, const safetensors::Checkpoint& checkpoint,
                                    ModelInfo& info) const override {
    info.d_model = config.integer("hidden_size");
    info.hidden_dim = config.integer("intermediate_size");
    info.num_experts = config.integer("num_local_experts");
    info.top_k = config.integer("num_experts_per_tok");
    info.router_jitter = config.number("router_jitter_noise", 0.0);
    info.activation = detail::activation_of(config.text("hidden_act", "silu"), config.path());
    const int64_t layers = config.integer("num_hidden_layers");
    const int64_t E = info.num_experts, d = info.d_model, F = info.hidden_dim;
    std::vector<MoELayerRef> refs;
    for (int64_t i = 0; i < layers; ++i) {
      const auto base = "model.layers." + std::to_string(i);
      MoELayerRef ref;
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
      detail::expect_shape(checkpoint, ref.router, {E, d}, config.path());
      detail::expect_gated_experts(checkpoint, ref, d, F, *this, config.path());
      refs.push_back(std::move(ref));
    }
    return refs;
  }

  std::vector<std::string> expert_tensors(const MoELayerRef& ref, int64_t j) const override {
    if (ref.fused) {
      return {ref.prefix + ".experts.gate_up_proj", ref.prefix + ".experts.down_proj"};
    }
    const auto e = expert_stem(ref) + std::to_string(j);
    return {e + ".w1.weight", e + ".w2.weight", e + ".w3.weight"};
  }

  std::string expert_stem(const MoELayerRef& ref) const override {
    return ref.prefix + ".experts.";
  }

  MoELayerOptions layer_options(const ModelInfo& info, const MoELayerRef& ref,
                                int64_t hidden_dim) const override {
    auto o = MoELayerOptions::preset("mixtral", info.d_model, hidden_dim, ref.num_experts);
    o.routing().k(info.top_k).renormalize(true);
    o.jitter(info.router_jitter).activation(info.activation);
    return o;
  }

  void load_experts(const safetensors::Checkpoint& checkpoint, const ModelInfo& info,
                    const MoELayerRef& ref, ExpertBank& bank) const override {
    detail::load_gated_experts(checkpoint, ref, info.hidden_dim, bank, *this);
  }
};

}  // namespace

std::unique_ptr<Family> make_mixtral_family() {
  return std::make_unique<Mixtral>();
}

}  // namespace moeprune::hf
