#include "models/lm/hf_architecture.h"

#include "hf/family.h"

#include <c10/util/Exception.h>

#include <map>

namespace moeprune::lm::detail {
namespace {

// Per family: the defaults of transformers' config classes (4.57) and of the DeepSeek-MoE
// remote configuration_deepseek.py, for keys a config.json may leave out.
struct Defaults {
  double rms_norm_eps;
  double rope_theta;
  double aux_loss_coef;
};

Defaults defaults_of(const std::string& model_type) {
  if (model_type == "mixtral") {
    return {1e-5, 1e6, 0.001};
  }
  if (model_type == "olmoe") {
    return {1e-5, 10000.0, 0.01};
  }
  return {1e-6, 10000.0, 0.001};  // qwen2_moe, qwen3_moe, deepseek
}

void refuse_if(bool condition, const hf::Config& config, const std::string& key,
               const std::string& why) {
  TORCH_CHECK(!condition, config.path(), ": \"", key, "\" = ", config.json().at(key).dump(),
              " is not supported (", why, "); moeprune would compute something else");
}

// rope_theta and the rope type: transformers 4.x writes rope_theta (+ rope_scaling), 5.x
// rope_parameters {rope_type, rope_theta}. Only the default (unscaled) RoPE is implemented.
double rope_theta_of(const hf::Config& config, double fallback) {
  double theta = config.number("rope_theta", fallback);
  const auto check_type = [&](const nlohmann::ordered_json& p, const std::string& key) {
    for (const char* type_key : {"rope_type", "type"}) {
      if (p.contains(type_key)) {
        const auto type = p.at(type_key).get<std::string>();
        refuse_if(type != "default", config, key, "rope type \"" + type + "\"; only default RoPE");
      }
    }
  };
  if (config.is_set("rope_scaling")) {
    check_type(config.json().at("rope_scaling"), "rope_scaling");
  }
  if (config.is_set("rope_parameters")) {
    const auto& p = config.json().at("rope_parameters");
    TORCH_CHECK(p.is_object(), config.path(), ": \"rope_parameters\" should be an object");
    check_type(p, "rope_parameters");
    if (p.contains("rope_theta")) {
      theta = p.at("rope_theta").get<double>();
    }
    if (p.contains("partial_rotary_factor")) {
      refuse_if(p.at("partial_rotary_factor").get<double>() != 1.0, config, "rope_parameters",
                "partial rotary embedding");
    }
  }
  if (config.is_set("partial_rotary_factor")) {
    refuse_if(config.number("partial_rotary_factor", 1.0) != 1.0, config, "partial_rotary_factor",
              "partial rotary embedding");
  }
  return theta;
}

}  // namespace

HfNames hf_names(const std::string& model_type) {
  if (model_type == "mixtral") {
    return {"block_sparse_moe", "w1", "w2", "w3", ""};
  }
  if (model_type == "qwen2_moe") {
    return {"mlp", "gate_proj", "down_proj", "up_proj", "shared_expert"};
  }
  if (model_type == "qwen3_moe" || model_type == "olmoe") {
    return {"mlp", "gate_proj", "down_proj", "up_proj", ""};
  }
  if (model_type == "deepseek") {
    return {"mlp", "gate_proj", "down_proj", "up_proj", "shared_experts"};
  }
  TORCH_CHECK(false, "model_type \"", model_type,
              "\" is not a supported language model (mixtral, qwen2_moe, qwen3_moe, olmoe, "
              "deepseek)");
}

double aux_loss_coef(const hf::Config& config) {
  const auto type = config.text("model_type", "");
  return config.number(type == "deepseek" ? "aux_loss_alpha" : "router_aux_loss_coef",
                       defaults_of(type).aux_loss_coef);
}

std::string experts_key(const std::string& model_type) {
  if (model_type == "mixtral") {
    return "num_local_experts";
  }
  if (model_type == "deepseek") {
    return "n_routed_experts";
  }
  hf_names(model_type);  // refuses unknown types
  return "num_experts";
}

CausalLMOptions options_from_config(const hf::Config& config) {
  const auto type = config.text("model_type", "");
  hf_names(type);
  const auto defaults = defaults_of(type);
  const int64_t d = config.integer("hidden_size");
  const int64_t heads = config.integer("num_attention_heads");
  TORCH_CHECK(heads >= 1 && (d % heads == 0 || config.is_set("head_dim")), config.path(),
              ": hidden_size ", d, " is not a multiple of num_attention_heads ", heads);
  const int64_t head_dim = config.is_set("head_dim") ? config.integer("head_dim") : d / heads;
  AttentionOptions attention(d, heads, config.integer("num_key_value_heads", heads), head_dim);
  const double eps = config.number("rms_norm_eps", defaults.rms_norm_eps);
  attention.rms_norm_eps(eps).rope_theta(rope_theta_of(config, defaults.rope_theta));

  CausalLMOptions o(config.integer("vocab_size"), d, config.integer("num_hidden_layers"),
                    attention);
  o.model_type(type).rms_norm_eps(eps);
  o.max_position_embeddings(config.integer("max_position_embeddings", 4096));
  o.tie_word_embeddings(config.flag("tie_word_embeddings", false));
  o.activation(hf::detail::activation_of(config.text("hidden_act", "silu"), config.path()));
  o.hf_config(config.json().dump());

  if (config.is_set("sliding_window") && type == "mixtral") {
    refuse_if(true, config, "sliding_window", "sliding-window attention");
  }
  if (config.is_set("use_sliding_window")) {
    refuse_if(config.flag("use_sliding_window", false), config, "use_sliding_window",
              "sliding-window attention");
  }
  if (config.is_set("pretraining_tp")) {
    refuse_if(config.integer("pretraining_tp", 1) != 1, config, "pretraining_tp",
              "split linear layers");
  }
  if (type == "qwen2_moe") {
    attention.qkv_bias(config.flag("qkv_bias", true));
  } else if (type != "mixtral") {
    const bool bias = config.flag("attention_bias", false);
    attention.qkv_bias(bias).output_bias(bias);
  }
  if (type == "qwen3_moe") {
    attention.qk_norm(QKNorm::kPerHead);
  } else if (type == "olmoe") {
    attention.qk_norm(QKNorm::kWhole);
    if (config.is_set("clip_qkv")) {
      attention.clip_qkv(config.number("clip_qkv", 0.0));
    }
  } else if (config.is_set("clip_qkv")) {
    refuse_if(true, config, "clip_qkv", "only OLMoE clips q, k and v");
  }
  if (type == "qwen2_moe" || type == "qwen3_moe" || type == "deepseek") {
    o.intermediate_size(config.integer("intermediate_size", 0));
  }
  if (type == "qwen2_moe") {
    o.shared_expert_size(config.integer("shared_expert_intermediate_size", 0));
    o.shared_expert_gate(o.shared_expert_size() > 0);
  }
  if (type == "deepseek") {
    const int64_t shared =
        config.is_set("n_shared_experts") ? config.integer("n_shared_experts") : 0;
    o.shared_expert_size(shared * config.integer("moe_intermediate_size"));
    if (config.is_set("topk_method")) {
      refuse_if(config.text("topk_method", "greedy") != "greedy", config, "topk_method",
                "only greedy top-k (DeepSeek-V2's grouped routing is not DeepSeek-MoE)");
    }
    if (config.is_set("routed_scaling_factor")) {
      refuse_if(config.number("routed_scaling_factor", 1.0) != 1.0, config, "routed_scaling_factor",
                "scaled routing weights");
    }
  }
  o.attention(attention);
  o.moe_layers(std::vector<bool>(static_cast<size_t>(o.num_layers()), false));
  return o;
}

nlohmann::ordered_json config_from_options(const CausalLMOptions& o, int64_t num_experts) {
  const auto& type = o.model_type();
  hf_names(type);
  auto c = o.hf_config().empty() ? nlohmann::ordered_json::object()
                                 : nlohmann::ordered_json::parse(o.hf_config());
  const auto& a = o.attention();
  const std::map<std::string, std::string> architectures{{"mixtral", "MixtralForCausalLM"},
                                                         {"qwen2_moe", "Qwen2MoeForCausalLM"},
                                                         {"qwen3_moe", "Qwen3MoeForCausalLM"},
                                                         {"olmoe", "OlmoeForCausalLM"},
                                                         {"deepseek", "DeepseekForCausalLM"}};
  c["architectures"] = {architectures.at(type)};
  c["model_type"] = type;
  c["vocab_size"] = o.vocab_size();
  c["hidden_size"] = o.hidden_size();
  c["num_hidden_layers"] = o.num_layers();
  c["num_attention_heads"] = a.num_heads();
  c["num_key_value_heads"] = a.num_kv_heads();
  c["head_dim"] = a.head_dim();
  c["rms_norm_eps"] = o.rms_norm_eps();
  c["max_position_embeddings"] = o.max_position_embeddings();
  c["tie_word_embeddings"] = o.tie_word_embeddings();
  c["hidden_act"] = "silu";
  if (c.contains("rope_parameters") && c["rope_parameters"].is_object()) {
    c["rope_parameters"]["rope_theta"] = a.rope_theta();
  } else {
    c["rope_theta"] = a.rope_theta();
  }
  if (type == "qwen2_moe") {
    c["qkv_bias"] = a.qkv_bias();
  } else if (type != "mixtral") {
    TORCH_CHECK(a.qkv_bias() == a.output_bias(), "save: ", type,
                " has one attention_bias for q, k, v and o; the model has qkv_bias ", a.qkv_bias(),
                ", output_bias ", a.output_bias());
    c["attention_bias"] = a.qkv_bias();
  }
  if (type == "olmoe") {
    c["clip_qkv"] =
        a.clip_qkv() > 0.0 ? nlohmann::ordered_json(a.clip_qkv()) : nlohmann::ordered_json();
  }
  // transformers 5.x writes Qwen-MoE's count as num_local_experts; keep the key the source used.
  const bool local_key =
      type != "mixtral" && c.contains("num_local_experts") && !c.contains(experts_key(type));
  c[local_key ? "num_local_experts" : experts_key(type)] = num_experts;
  if (o.moe().has_value()) {
    const auto& m = *o.moe();
    c["num_experts_per_tok"] = m.routing().k();
    c[type == "mixtral" || type == "olmoe" ? "intermediate_size" : "moe_intermediate_size"] =
        m.hidden_dim();
    if (type != "mixtral") {
      c["norm_topk_prob"] = m.routing().renormalize();
    }
  }
  if (type == "qwen2_moe" || type == "qwen3_moe" || type == "deepseek") {
    c["intermediate_size"] = o.intermediate_size();
  }
  // Which layers are MoE, in each family's terms.
  std::vector<int64_t> dense;
  for (int64_t i = 0; i < o.num_layers(); ++i) {
    if (!o.moe_layers()[static_cast<size_t>(i)]) {
      dense.push_back(i);
    }
  }
  if (type == "mixtral" || type == "olmoe") {
    TORCH_CHECK(dense.empty(), "save: every ", type, " layer is MoE; layer ",
                dense.empty() ? 0 : dense[0], " is dense");
  } else if (type == "qwen2_moe" || type == "qwen3_moe") {
    c["decoder_sparse_step"] = 1;
    c["mlp_only_layers"] = dense;
  } else {  // deepseek: the dense layers must be the first k
    int64_t k = 0;
    while (k < o.num_layers() && !o.moe_layers()[static_cast<size_t>(k)]) {
      ++k;
    }
    for (int64_t i = k; i < o.num_layers(); ++i) {
      TORCH_CHECK(o.moe_layers()[static_cast<size_t>(i)],
                  "save: deepseek's dense layers are the first ", "first_k_dense_replace; layer ",
                  i, " is dense after MoE layers");
    }
    c["first_k_dense_replace"] = k;
    c["moe_layer_freq"] = 1;
  }
  if (type == "qwen2_moe") {
    c["shared_expert_intermediate_size"] = o.shared_expert_size();
  } else if (type == "deepseek") {
    const int64_t width = o.moe().has_value() ? o.moe()->hidden_dim() : 0;
    TORCH_CHECK(
        width > 0 ? o.shared_expert_size() % width == 0 : o.shared_expert_size() == 0,
        "save: deepseek's shared experts are n_shared_experts * moe_intermediate_size wide; ",
        o.shared_expert_size(), " is not a multiple of ", width);
    c["n_shared_experts"] = width > 0 ? o.shared_expert_size() / width : 0;
  } else {
    TORCH_CHECK(o.shared_expert_size() == 0, "save: ", type, " has no shared expert");
  }
  return c;
}

}  // namespace moeprune::lm::detail
