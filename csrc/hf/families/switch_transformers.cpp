// Switch Transformers (transformers' modeling_switch_transformers.py): T5 encoder and decoder
// whose block i is sparse when i % sparse_step == 1 (every block when the step is 1); the MoE
// block is layer.1 of an encoder block and layer.2 of a decoder block; top-1 routing with a
// per-sequence expert capacity, ReLU experts wi/wo without bias.
#include "hf/family.h"

#include <torch/torch.h>

#include <memory>

namespace moeprune::hf {
namespace {

class SwitchTransformers : public Family {
 public:
  std::string model_type() const override { return "switch_transformers"; }
  std::string summary() const override {
    return "SwitchTransformersForConditionalGeneration; encoder/decoder blocks with i % "
           "sparse_step == 1 are MoE; top-1 softmax router with expert_capacity per sequence; "
           "ReLU experts wi/wo";
  }
  std::string experts_key() const override { return "num_experts"; }

  std::vector<MoELayerRef> describe(const Config& config, const safetensors::Checkpoint& checkpoint,
                                    ModelInfo& info) const override {
    info.d_model = config.integer("d_model");
    info.hidden_dim = config.integer("d_ff");
    info.num_experts = config.integer("num_experts");
    info.top_k = 1;
    info.expert_capacity = config.integer("expert_capacity");
    info.router_jitter = config.number("router_jitter_noise", 0.0);
    info.activation = detail::activation_of(config.text("dense_act_fn", "relu"), config.path());
    TORCH_CHECK(!config.flag("router_bias", false), config.path(),
                ": router_bias is true; moeprune's routers have no bias");
    TORCH_CHECK(!config.flag("is_gated_act", false), config.path(),
                ": is_gated_act is true; gated Switch experts are not supported");
    const int64_t E = info.num_experts, d = info.d_model, F = info.hidden_dim;
    const struct {
      const char* stack;
      const char* layers_key;
      const char* step_key;
      int sublayer;
    } stacks[] = {{"encoder", "num_layers", "encoder_sparse_step", 1},
                  {"decoder", "num_decoder_layers", "decoder_sparse_step", 2}};
    std::vector<MoELayerRef> refs;
    for (const auto& s : stacks) {
      // transformers: num_decoder_layers defaults to num_layers.
      const int64_t layers = config.integer(
          s.layers_key, std::string(s.stack) == "decoder" ? config.integer("num_layers") : -1);
      const int64_t step = config.integer(s.step_key);
      for (int64_t i = 0; i < layers; ++i) {
        const bool sparse = step > 0 && (step == 1 || i % step == 1);
        if (!sparse) {
          continue;
        }
        MoELayerRef ref;
        ref.num_experts = E;
        ref.prefix = std::string(s.stack) + ".block." + std::to_string(i) + ".layer." +
                     std::to_string(s.sublayer) + ".mlp";
        ref.router = ref.prefix + ".router.classifier.weight";
        detail::expect_shape(checkpoint, ref.router, {E, d}, config.path());
        for (int64_t j = 0; j < E; ++j) {
          const auto names = expert_tensors(ref, j);
          detail::expect_shape(checkpoint, names[0], {F, d}, config.path());
          detail::expect_shape(checkpoint, names[1], {d, F}, config.path());
        }
        refs.push_back(std::move(ref));
      }
    }
    return refs;
  }

  std::vector<std::string> expert_tensors(const MoELayerRef& ref, int64_t j) const override {
    const auto e = expert_stem(ref) + std::to_string(j);
    return {e + ".wi.weight", e + ".wo.weight"};
  }

  std::string expert_stem(const MoELayerRef& ref) const override {
    return ref.prefix + ".experts.expert_";
  }

  MoELayerOptions layer_options(const ModelInfo& info, const MoELayerRef& ref,
                                int64_t hidden_dim) const override {
    auto o = MoELayerOptions::preset("switch", info.d_model, hidden_dim, ref.num_experts);
    o.routing().k(info.top_k).expert_capacity(info.expert_capacity);
    o.router_as<TopKRouterConfig>().jitter(info.router_jitter);
    o.activation(info.activation);
    return o;
  }

  void load_experts(const safetensors::Checkpoint& checkpoint, const ModelInfo& /*info*/,
                    const MoELayerRef& ref, ExpertBank& bank) const override {
    const auto dtype = bank->w1.scalar_type();
    for (int64_t j = 0; j < ref.num_experts; ++j) {
      const auto names = expert_tensors(ref, j);
      // HF stores nn.Linear weights [out, in]; the bank multiplies x [*, in] by [in, out].
      bank->w1[j].copy_(checkpoint.tensor(names[0]).to(dtype).t());
      bank->w2[j].copy_(checkpoint.tensor(names[1]).to(dtype).t());
    }
  }

  void write_cut_config(nlohmann::ordered_json& /*config*/) const override {
    // Top-1: the chosen expert's probability comes from a softmax over the rows present, in
    // transformers as in moeprune; no key says otherwise.
  }
};

}  // namespace

std::unique_ptr<Family> make_switch_transformers_family() {
  return std::make_unique<SwitchTransformers>();
}

}  // namespace moeprune::hf
