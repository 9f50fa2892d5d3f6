// The families whose MoE block is `model.layers.{i}.mlp` with a router `mlp.gate.weight` [E, d]
// and SwiGLU experts `mlp.experts.{j}.{gate,up,down}_proj.weight` (or transformers 5.x's fused
// `mlp.experts.gate_up_proj` / `down_proj`): Qwen2-MoE and Qwen3-MoE (modeling_qwen2_moe.py,
// modeling_qwen3_moe.py), OLMoE (modeling_olmoe.py) and DeepSeek-MoE 16B (the hub's remote
// modeling_deepseek.py), and for their MoE layers DeepSeek-V2, DeepSeek-V3 and GLM-4.5
// (modeling_deepseek_v2.py, modeling_deepseek_v3.py, modeling_glm4_moe.py: group-limited routing,
// V3/GLM with the router's e_score_correction_bias). They differ in the config keys of the
// sizes, in which decoder layers are MoE, in the default of norm_topk_prob and in the router;
// shared experts (Qwen2-MoE, DeepSeek) sit beside the routed ones and are not part of the MoE
// layer here.
#include "hf/family.h"

#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <memory>

namespace moeprune::hf {
namespace {

// The router of a family.
enum class Routing {
  kSoftmaxTopK,  // softmax over E, top k (Qwen, OLMoE, DeepSeek-MoE)
  kDeepSeekV2,   // DeepseekV2MoEGate: softmax, greedy or group_limited_greedy, scaled
  kDeepSeekV3,   // DeepseekV3TopkRouter / Glm4MoeTopkRouter: sigmoid, bias, groups, scaled
};

struct Spec {
  std::string model_type;
  std::string experts_key;  // the routed expert count
  std::string width_key;    // an expert's intermediate size
  bool norm_topk_prob_default = false;
  // Whether decoder layer i of `layers` holds a MoE block.
  std::function<bool(const Config&, int64_t)> is_moe_layer;
  Routing routing = Routing::kSoftmaxTopK;
  // The configuration class's defaults of n_group, topk_group and routed_scaling_factor.
  int64_t n_group_default = 1, topk_group_default = 1;
  double scaling_default = 1.0;
};

// transformers' group-limited routers as the config sets them.
GroupLimitedRoutingOptions group_routing(const Config& config, const Spec& spec, ModelInfo& info) {
  GroupLimitedRoutingOptions g;
  const auto integer_or = [&](const std::string& key, int64_t fallback) {
    return config.is_set(key) ? config.integer(key) : fallback;
  };
  g.num_groups(integer_or("n_group", spec.n_group_default))
      .groups_kept(integer_or("topk_group", spec.topk_group_default))
      .scaling(config.is_set("routed_scaling_factor")
                   ? config.number("routed_scaling_factor", spec.scaling_default)
                   : spec.scaling_default);
  if (spec.routing == Routing::kDeepSeekV3) {
    const auto scoring = config.text("scoring_func", "sigmoid");
    TORCH_CHECK(scoring == "sigmoid", config.path(), ": scoring_func \"", scoring,
                "\" is not supported for ", spec.model_type, " (transformers uses sigmoid)");
    g.score_function(ScoreFunction::kSigmoid)
        .group_score(GroupScore::kTopTwoSum)
        .correction_bias(true);
  } else {
    const auto method = config.text("topk_method", "greedy");
    TORCH_CHECK(method == "greedy" || method == "group_limited_greedy", config.path(),
                ": topk_method \"", method, "\" is not supported for ", spec.model_type,
                " (greedy, group_limited_greedy)");
    g.score_function(ScoreFunction::kSoftmax).group_score(GroupScore::kMax).correction_bias(false);
    if (method == "greedy") {
      g.num_groups(1).groups_kept(1);
    }
    // transformers' DeepseekV2MoEGate scales and never renormalises (norm_topk_prob unused).
    info.norm_topk_prob = false;
  }
  TORCH_CHECK(g.num_groups() >= 1 && info.num_experts % g.num_groups() == 0, config.path(), ": ",
              info.num_experts, " experts do not split into n_group = ", g.num_groups(), " groups");
  TORCH_CHECK(g.groups_kept() >= 1 && g.groups_kept() <= g.num_groups(), config.path(),
              ": topk_group should be in [1, n_group = ", g.num_groups(), "], got ",
              g.groups_kept());
  return g;
}

class MlpExperts : public Family {
 public:
  explicit MlpExperts(Spec spec) : spec_(std::move(spec)) {}

  std::vector<std::string> model_types() const override { return {spec_.model_type}; }
  std::string experts_key() const override { return spec_.experts_key; }

  std::vector<MoELayerRef> describe(const Config& config, const safetensors::Checkpoint& checkpoint,
                                    ModelInfo& info) const override {
    info.d_model = config.integer("hidden_size");
    info.hidden_dim = config.integer(spec_.width_key);
    // transformers 5.x writes Qwen-MoE's expert count as num_local_experts (attribute_map).
    info.num_experts =
        config.integer(config.contains(spec_.experts_key) || !config.contains("num_local_experts")
                           ? spec_.experts_key
                           : "num_local_experts");
    info.top_k = config.integer("num_experts_per_tok");
    info.norm_topk_prob = config.flag("norm_topk_prob", spec_.norm_topk_prob_default);
    info.activation = detail::activation_of(config.text("hidden_act", "silu"), config.path());
    if (spec_.routing != Routing::kSoftmaxTopK) {
      info.group_routing = group_routing(config, spec_, info);
    } else if (config.contains("scoring_func")) {
      const auto scoring = config.text("scoring_func", "softmax");
      TORCH_CHECK(scoring == "softmax", config.path(), ": scoring_func \"", scoring,
                  "\" is not supported for ", spec_.model_type, " (softmax)");
    }
    const int64_t layers = config.integer("num_hidden_layers");
    const int64_t E = info.num_experts, d = info.d_model, F = info.hidden_dim;
    std::vector<MoELayerRef> refs;
    for (int64_t i = 0; i < layers; ++i) {
      if (!spec_.is_moe_layer(config, i)) {
        continue;
      }
      MoELayerRef ref;
      ref.decoder_layer = i;
      ref.num_experts = E;
      ref.prefix = "model.layers." + std::to_string(i) + ".mlp";
      ref.router = ref.prefix + ".gate.weight";
      ref.fused = checkpoint.contains(ref.prefix + ".experts.gate_up_proj");
      detail::expect_shape(checkpoint, ref.router, {E, d}, config.path());
      if (spec_.routing == Routing::kDeepSeekV3) {
        ref.router_bias = ref.prefix + ".gate.e_score_correction_bias";
        detail::expect_shape(checkpoint, ref.router_bias, {E}, config.path());
      }
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
    return {e + ".gate_proj.weight", e + ".down_proj.weight", e + ".up_proj.weight"};
  }

  std::string expert_stem(const MoELayerRef& ref) const override {
    return ref.prefix + ".experts.";
  }

  MoELayerOptions layer_options(const ModelInfo& info, const MoELayerRef& ref,
                                int64_t hidden_dim) const override {
    if (info.group_routing) {
      const bool v3 = info.group_routing->score_function() == ScoreFunction::kSigmoid;
      auto o = MoELayerOptions::preset(v3 ? "deepseek_v3" : "deepseek_v2", info.d_model, hidden_dim,
                                       ref.num_experts);
      o.routing().k(info.top_k).renormalize(info.norm_topk_prob);
      o.groups(*info.group_routing);
      o.activation(info.activation);
      return o;
    }
    auto o = MoELayerOptions::preset("mixtral", info.d_model, hidden_dim, ref.num_experts);
    o.routing().k(info.top_k).renormalize(info.norm_topk_prob);
    o.activation(info.activation);
    return o;
  }

  void load_experts(const safetensors::Checkpoint& checkpoint, const ModelInfo& info,
                    const MoELayerRef& ref, ExpertBank& bank) const override {
    detail::load_gated_experts(checkpoint, ref, info.hidden_dim, bank, *this);
  }

 private:
  Spec spec_;
};

std::vector<int64_t> integers(const Config& config, const std::string& key) {
  if (!config.contains(key) || config.json().at(key).is_null()) {
    return {};
  }
  const auto& v = config.json().at(key);
  TORCH_CHECK(v.is_array(), config.path(), ": \"", key, "\" should be a list of layer indices");
  std::vector<int64_t> out;
  for (const auto& x : v) {
    TORCH_CHECK(x.is_number_integer(), config.path(), ": \"", key,
                "\" should hold integers, found ", x.dump());
    out.push_back(x.get<int64_t>());
  }
  return out;
}

// Qwen2-MoE / Qwen3-MoE (Qwen2MoeDecoderLayer): layers in mlp_only_layers are dense; the others
// are MoE when (i + 1) % decoder_sparse_step == 0.
bool qwen_is_moe_layer(const Config& config, int64_t i) {
  const auto dense = integers(config, "mlp_only_layers");
  const int64_t step = config.integer("decoder_sparse_step", 1);
  TORCH_CHECK(step >= 1, config.path(), ": decoder_sparse_step should be >= 1, got ", step);
  const int64_t experts =
      config.integer(config.contains("num_experts") || !config.contains("num_local_experts")
                         ? "num_experts"
                         : "num_local_experts");
  return std::find(dense.begin(), dense.end(), i) == dense.end() && experts > 0 &&
         (i + 1) % step == 0;
}

// DeepSeek (DeepseekDecoderLayer): the first first_k_dense_replace layers are dense, then every
// layer with i % moe_layer_freq == 0 is MoE.
bool deepseek_is_moe_layer(const Config& config, int64_t i) {
  const int64_t freq = config.integer("moe_layer_freq", 1);
  TORCH_CHECK(freq >= 1, config.path(), ": moe_layer_freq should be >= 1, got ", freq);
  return i >= config.integer("first_k_dense_replace", 0) && i % freq == 0;
}

}  // namespace

std::vector<std::unique_ptr<Family>> make_mlp_experts_families() {
  std::vector<std::unique_ptr<Family>> f;
  f.push_back(std::make_unique<MlpExperts>(
      Spec{"qwen2_moe", "num_experts", "moe_intermediate_size", false, qwen_is_moe_layer}));
  f.push_back(std::make_unique<MlpExperts>(
      Spec{"qwen3_moe", "num_experts", "moe_intermediate_size", false, qwen_is_moe_layer}));
  f.push_back(std::make_unique<MlpExperts>(Spec{"olmoe", "num_experts", "intermediate_size", false,
                                                [](const Config&, int64_t) { return true; }}));
  f.push_back(std::make_unique<MlpExperts>(
      Spec{"deepseek", "n_routed_experts", "moe_intermediate_size", false, deepseek_is_moe_layer}));
  // DeepSeek-V2/V3 and GLM-4.5 (their decoder layers: `first_k_dense_replace` dense, then MoE),
  // with their configuration classes' defaults.
  const auto after_dense = [](int64_t first_k) {
    return [first_k](const Config& config, int64_t i) {
      return i >= config.integer("first_k_dense_replace", first_k);
    };
  };
  f.push_back(
      std::make_unique<MlpExperts>(Spec{"deepseek_v2", "n_routed_experts", "moe_intermediate_size",
                                        false, after_dense(0), Routing::kDeepSeekV2, 1, 1, 1.0}));
  f.push_back(
      std::make_unique<MlpExperts>(Spec{"deepseek_v3", "n_routed_experts", "moe_intermediate_size",
                                        true, after_dense(3), Routing::kDeepSeekV3, 8, 4, 2.5}));
  f.push_back(
      std::make_unique<MlpExperts>(Spec{"glm4_moe", "n_routed_experts", "moe_intermediate_size",
                                        true, after_dense(1), Routing::kDeepSeekV3, 1, 1, 1.0}));
  return f;
}

}  // namespace moeprune::hf
