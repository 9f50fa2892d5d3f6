#include "models/lm/families/mlp_experts.h"

#include <c10/util/Exception.h>
#include <torch/torch.h>

namespace moeprune::lm {

std::optional<GroupLimitedRoutingOptions> MlpExpertsFamily::group_routing(
    const hf::Config& config, hf::ModelInfo& /*info*/) const {
  if (config.contains("scoring_func")) {
    const auto scoring = config.text("scoring_func", "softmax");
    TORCH_CHECK(scoring == "softmax", config.path(), ": scoring_func \"", scoring,
                "\" is not supported for ", model_type(), " (softmax)");
  }
  return std::nullopt;
}

std::vector<hf::MoELayerRef> MlpExpertsFamily::describe(const hf::Config& config,
                                                        const safetensors::Checkpoint& checkpoint,
                                                        hf::ModelInfo& info) const {
  info.d_model = config.integer("hidden_size");
  info.hidden_dim = config.integer(width_key());
  const auto key = count_key(config);
  info.num_experts = config.integer(key);
  if (key != experts_key()) {
    info.config_experts_key = key;  // transformers 5.x writes num_local_experts for every family
  }
  info.top_k = config.integer("num_experts_per_tok");
  info.norm_topk_prob = config.flag("norm_topk_prob", norm_topk_prob_default());
  info.activation = hf::detail::activation_of(config.text("hidden_act", "silu"), config.path());
  info.group_routing = group_routing(config, info);
  const int64_t layers = config.integer("num_hidden_layers");
  const int64_t E = info.num_experts, d = info.d_model, F = info.hidden_dim;
  std::vector<hf::MoELayerRef> refs;
  for (int64_t i = 0; i < layers; ++i) {
    if (!is_moe_layer(config, i)) {
      continue;
    }
    hf::MoELayerRef ref;
    ref.decoder_layer = i;
    ref.num_experts = E;
    ref.prefix = "model.layers." + std::to_string(i) + ".mlp";
    ref.router = ref.prefix + ".gate.weight";
    ref.fused = checkpoint.contains(hf::detail::fused_gated_experts(ref).front());
    hf::detail::expect_shape(checkpoint, ref.router, {E, d}, config.path());
    if (router_has_bias()) {
      ref.router_bias = ref.prefix + ".gate.e_score_correction_bias";
      hf::detail::expect_shape(checkpoint, ref.router_bias, {E}, config.path());
    }
    hf::detail::expect_gated_experts(checkpoint, ref, d, F, *this, config.path());
    refs.push_back(std::move(ref));
  }
  return refs;
}

std::string MlpExpertsFamily::count_key(const hf::Config& config) const {
  return config.contains(experts_key()) || !config.contains("num_local_experts")
             ? experts_key()
             : "num_local_experts";
}

std::vector<std::string> MlpExpertsFamily::expert_tensors(const hf::MoELayerRef& ref,
                                                          int64_t j) const {
  if (ref.fused) {
    return hf::detail::fused_gated_experts(ref);
  }
  const auto e = expert_stem(ref) + std::to_string(j);
  return {e + ".gate_proj.weight", e + ".down_proj.weight", e + ".up_proj.weight"};
}

std::string MlpExpertsFamily::expert_stem(const hf::MoELayerRef& ref) const {
  return ref.prefix + ".experts.";
}

MoELayerOptions MlpExpertsFamily::layer_options(const hf::ModelInfo& info,
                                                const hf::MoELayerRef& ref,
                                                int64_t hidden_dim) const {
  if (info.group_routing) {
    const bool sigmoid = info.group_routing->score_function() == ScoreFunction::kSigmoid;
    auto o = MoELayerOptions::preset(sigmoid ? "group_limited_sigmoid" : "group_limited_softmax",
                                     info.d_model, hidden_dim, ref.num_experts);
    o.routing().k(info.top_k).renormalize(info.norm_topk_prob);
    o.router_as<GroupLimitedRouterConfig>().groups(*info.group_routing);
    o.activation(info.activation);
    return o;
  }
  auto o = MoELayerOptions::preset("top_k_gated", info.d_model, hidden_dim, ref.num_experts);
  o.routing().k(info.top_k).renormalize(info.norm_topk_prob);
  o.activation(info.activation);
  return o;
}

void MlpExpertsFamily::load_experts(const safetensors::Checkpoint& checkpoint,
                                    const hf::ModelInfo& info, const hf::MoELayerRef& ref,
                                    ExpertBank& bank) const {
  hf::detail::load_gated_experts(checkpoint, ref, info.hidden_dim, bank, *this);
}

void MlpExpertsFamily::write_cut_config(nlohmann::ordered_json& config) const {
  config["norm_topk_prob"] = true;
}

}  // namespace moeprune::lm
