#include "models/lm/hf_architecture.h"

#include "hf/family.h"

#include <moeprune/models/lm/rotary.h>

#include <c10/util/Exception.h>

#include <cmath>
#include <map>
#include <optional>
#include <type_traits>

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
  if (model_type == "glm4_moe") {
    return {1e-5, 10000.0, 0.0};
  }
  if (model_type == "deepseek_v3") {
    // Auxiliary-loss-free balancing: the correction bias, updated outside the gradient.
    return {1e-6, 10000.0, 0.0};
  }
  return {1e-6, 10000.0, 0.001};  // qwen2_moe, qwen3_moe, deepseek, deepseek_v2
}

bool is_latent_family(const std::string& model_type) {
  return model_type == "deepseek_v2" || model_type == "deepseek_v3";
}

// The families whose dense layers are the first first_k_dense_replace and whose shared experts
// are n_shared_experts * moe_intermediate_size wide.
bool is_deepseek_like(const std::string& model_type) {
  return model_type == "deepseek" || model_type == "deepseek_v2" || model_type == "deepseek_v3" ||
         model_type == "glm4_moe";
}

void refuse_if(bool condition, const hf::Config& config, const std::string& key,
               const std::string& why) {
  TORCH_CHECK(!condition, config.path(), ": \"", key, "\" = ", config.json().at(key).dump(),
              " is not supported (", why, "); moeprune would compute something else");
}

// A number from a rope_scaling object (null and absent alike: the fallback).
// p[key] (p is config.json's object `where`) as T, refusing another JSON type with the key named.
template <typename T>
T nested(const hf::Config& config, const nlohmann::ordered_json& p, const std::string& where,
         const char* key) {
  const auto& v = p.at(key);
  const char* want = std::is_same_v<T, bool>          ? "true/false"
                     : std::is_same_v<T, std::string> ? "a string"
                                                      : "a number";
  const bool ok = std::is_same_v<T, bool>          ? v.is_boolean()
                  : std::is_same_v<T, std::string> ? v.is_string()
                                                   : v.is_number();
  TORCH_CHECK(ok, config.path(), ": \"", where, "\" \"", key, "\" is ", v.dump(), ", not ", want);
  return v.get<T>();
}

double rope_number(const hf::Config& config, const nlohmann::ordered_json& p,
                   const std::string& where, const char* key, double fallback) {
  return p.contains(key) && !p.at(key).is_null() ? nested<double>(config, p, where, key) : fallback;
}

// rope_theta, the rope type and YaRN's parameters: transformers 4.x writes rope_theta (+
// rope_scaling), 5.x rope_parameters {rope_type, rope_theta, ...}. Default RoPE and YaRN are
// implemented; other types are refused.
void read_rope(const hf::Config& config, double theta_fallback, AttentionOptions& attention) {
  attention.rope_theta(config.number("rope_theta", theta_fallback));
  const auto read_scaling = [&](const nlohmann::ordered_json& p, const std::string& key) {
    TORCH_CHECK(p.is_object(), config.path(), ": \"", key, "\" should be an object");
    std::string type = "default";
    for (const char* type_key : {"rope_type", "type"}) {
      if (p.contains(type_key)) {
        type = nested<std::string>(config, p, key, type_key);
      }
    }
    refuse_if(type != "default" && type != "yarn", config, key,
              "rope type \"" + type + "\"; default RoPE and yarn are implemented");
    if (p.contains("rope_theta")) {
      attention.rope_theta(nested<double>(config, p, key, "rope_theta"));
    }
    if (type == "yarn") {
      TORCH_CHECK(p.contains("factor"), config.path(), ": \"", key, "\" is yarn without a factor");
      YarnScaling y;
      y.factor(nested<double>(config, p, key, "factor"))
          .beta_fast(rope_number(config, p, key, "beta_fast", 32.0))
          .beta_slow(rope_number(config, p, key, "beta_slow", 1.0))
          .mscale(rope_number(config, p, key, "mscale", 0.0))
          .mscale_all_dim(rope_number(config, p, key, "mscale_all_dim", 0.0))
          .attention_factor(rope_number(config, p, key, "attention_factor", 0.0))
          .truncate(p.contains("truncate") ? nested<bool>(config, p, key, "truncate") : true);
      const double original = rope_number(config, p, key, "original_max_position_embeddings", 0.0);
      TORCH_CHECK(original >= 0.0 && original < 1e15, config.path(), ": \"", key,
                  "\" original_max_position_embeddings is ", original, ", not a length");
      y.original_max_position_embeddings(original > 0.0
                                             ? static_cast<int64_t>(original)
                                             : config.integer("max_position_embeddings", 4096));
      attention.yarn(y);
    }
  };
  if (config.is_set("rope_scaling")) {
    read_scaling(config.json().at("rope_scaling"), "rope_scaling");
  }
  if (config.is_set("rope_parameters")) {
    read_scaling(config.json().at("rope_parameters"), "rope_parameters");
  }
}

// partial_rotary_factor (top level or in rope_parameters): GLM-4.5 turns the first
// head_dim * factor features (Glm4MoeConfig's default 0.5); the other families turn them all.
double partial_rotary_factor(const hf::Config& config, const std::string& type) {
  double factor = type == "glm4_moe" ? 0.5 : 1.0;
  std::string key = "partial_rotary_factor";
  if (config.is_set("partial_rotary_factor")) {
    factor = config.number("partial_rotary_factor", factor);
  }
  if (config.is_set("rope_parameters") && config.json().at("rope_parameters").is_object() &&
      config.json().at("rope_parameters").contains("partial_rotary_factor")) {
    factor = nested<double>(config, config.json().at("rope_parameters"), "rope_parameters",
                            "partial_rotary_factor");
    key = "rope_parameters";
  }
  if (type != "glm4_moe" && factor != 1.0) {
    refuse_if(true, config, key, "partial rotary embedding outside GLM-4.5");
  }
  TORCH_CHECK(factor > 0.0 && factor <= 1.0, config.path(),
              ": partial_rotary_factor should be in (0, 1], got ", factor);
  return factor;
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
  if (is_deepseek_like(model_type)) {
    return {"mlp", "gate_proj", "down_proj", "up_proj", "shared_experts"};
  }
  TORCH_CHECK(false, "model_type \"", model_type,
              "\" is not a supported language model (mixtral, qwen2_moe, qwen3_moe, olmoe, "
              "deepseek, deepseek_v2, deepseek_v3, glm4_moe)");
}

double aux_loss_coef(const hf::Config& config) {
  const auto type = config.text("model_type", "");
  return config.number(is_deepseek_like(type) ? "aux_loss_alpha" : "router_aux_loss_coef",
                       defaults_of(type).aux_loss_coef);
}

std::string experts_key(const std::string& model_type) {
  if (model_type == "mixtral") {
    return "num_local_experts";
  }
  if (is_deepseek_like(model_type)) {
    return "n_routed_experts";
  }
  hf_names(model_type);  // refuses unknown types
  return "num_experts";
}

namespace {

// options_from_config() without the JSON type-error net.
CausalLMOptions options_of(const hf::Config& config) {
  const auto type = config.text("model_type", "");
  hf_names(type);
  const auto defaults = defaults_of(type);
  const int64_t d = config.integer("hidden_size");
  const int64_t heads = config.integer("num_attention_heads");
  TORCH_CHECK(heads >= 1 && (d % heads == 0 || config.is_set("head_dim")), config.path(),
              ": hidden_size ", d, " is not a multiple of num_attention_heads ", heads);
  const bool latent = is_latent_family(type);
  // DeepSeek's configuration classes set head_dim to qk_rope_head_dim; the query/key head is
  // qk_nope_head_dim + qk_rope_head_dim there.
  int64_t head_dim = config.is_set("head_dim") ? config.integer("head_dim") : d / heads;
  std::optional<LatentAttentionOptions> latent_options;
  if (latent) {
    LatentAttentionOptions l;  // DeepseekV2Config / DeepseekV3Config defaults
    l.q_lora_rank(config.is_set("q_lora_rank")     ? config.integer("q_lora_rank")
                  : config.contains("q_lora_rank") ? 0
                                                   : 1536)
        .kv_lora_rank(config.integer("kv_lora_rank", 512))
        .qk_nope_head_dim(config.integer("qk_nope_head_dim", 128))
        .qk_rope_head_dim(config.integer("qk_rope_head_dim", 64))
        .v_head_dim(config.integer("v_head_dim", 128));
    head_dim = l.qk_nope_head_dim() + l.qk_rope_head_dim();
    const int64_t kv_heads = config.integer("num_key_value_heads", heads);
    TORCH_CHECK(kv_heads == heads, config.path(), ": num_key_value_heads = ", kv_heads,
                " differs from num_attention_heads = ", heads,
                "; latent attention expands keys and values for every head (transformers would "
                "repeat them)");
    latent_options = l;
  }
  AttentionOptions attention(d, heads, config.integer("num_key_value_heads", heads), head_dim);
  const double eps = config.number("rms_norm_eps", defaults.rms_norm_eps);
  attention.rms_norm_eps(eps).latent(latent_options);
  read_rope(config, defaults.rope_theta, attention);
  const double partial = partial_rotary_factor(config, type);
  if (partial < 1.0) {
    // int(head_dim * partial_rotary_factor), as modeling_rope_utils computes the rotary width.
    attention.rotary_dim(static_cast<int64_t>(static_cast<double>(head_dim) * partial));
  }
  if (type == "deepseek_v2") {
    // apply_rotary_emb turns complex pairs, in fp32.
    attention.rope_interleaved(true).rotary_in_fp32(true);
  } else if (type == "deepseek_v3") {
    attention.rope_interleaved(config.flag("rope_interleave", true));
    // DeepseekV3Attention: the softmax scale takes YaRN's mscale(factor, mscale_all_dim)^2.
    if (attention.yarn() && attention.yarn()->mscale_all_dim() != 0.0) {
      const double m = yarn_mscale(attention.yarn()->factor(), attention.yarn()->mscale_all_dim());
      attention.softmax_scale(m * m / std::sqrt(static_cast<double>(head_dim)));
    }
  }

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
  } else if (type == "glm4_moe") {  // biases on q, k and v only
    attention.qkv_bias(config.flag("attention_bias", false)).output_bias(false);
  } else if (type != "mixtral") {
    const bool bias = config.flag("attention_bias", false);
    attention.qkv_bias(bias).output_bias(bias);
  }
  if (type == "qwen3_moe" || (type == "glm4_moe" && config.flag("use_qk_norm", false))) {
    attention.qk_norm(QKNorm::kPerHead);
  } else if (type == "olmoe") {
    attention.qk_norm(QKNorm::kWhole);
    if (config.is_set("clip_qkv")) {
      attention.clip_qkv(config.number("clip_qkv", 0.0));
    }
  } else if (config.is_set("clip_qkv")) {
    refuse_if(true, config, "clip_qkv", "only OLMoE clips q, k and v");
  }
  if (type == "qwen2_moe" || type == "qwen3_moe" || is_deepseek_like(type)) {
    o.intermediate_size(config.integer("intermediate_size", 0));
  }
  if (type == "qwen2_moe") {
    o.shared_expert_size(config.integer("shared_expert_intermediate_size", 0));
    o.shared_expert_gate(o.shared_expert_size() > 0);
  }
  if (is_deepseek_like(type)) {
    // DeepSeek-MoE and V2 may leave n_shared_experts null; V3 and GLM-4.5 default to one.
    const int64_t fallback = type == "deepseek_v3" || type == "glm4_moe" ? 1 : 0;
    const int64_t shared = config.is_set("n_shared_experts") ? config.integer("n_shared_experts")
                           : config.contains("n_shared_experts") ? 0
                                                                 : fallback;
    o.shared_expert_size(shared * config.integer("moe_intermediate_size"));
  }
  if (type == "deepseek") {
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

}  // namespace

CausalLMOptions options_from_config(const hf::Config& config) {
  return hf::read_checked(config, [&] { return options_of(config); });
}

nlohmann::ordered_json config_from_options(const CausalLMOptions& o, int64_t num_experts) {
  const auto& type = o.model_type();
  hf_names(type);
  auto c = o.hf_config().empty() ? nlohmann::ordered_json::object()
                                 : nlohmann::ordered_json::parse(o.hf_config());
  const auto& a = o.attention();
  const std::map<std::string, std::string> architectures{
      {"mixtral", "MixtralForCausalLM"},        {"qwen2_moe", "Qwen2MoeForCausalLM"},
      {"qwen3_moe", "Qwen3MoeForCausalLM"},     {"olmoe", "OlmoeForCausalLM"},
      {"deepseek", "DeepseekForCausalLM"},      {"deepseek_v2", "DeepseekV2ForCausalLM"},
      {"deepseek_v3", "DeepseekV3ForCausalLM"}, {"glm4_moe", "Glm4MoeForCausalLM"}};
  c["architectures"] = {architectures.at(type)};
  c["model_type"] = type;
  c["vocab_size"] = o.vocab_size();
  c["hidden_size"] = o.hidden_size();
  c["num_hidden_layers"] = o.num_layers();
  c["num_attention_heads"] = a.num_heads();
  c["num_key_value_heads"] = a.num_kv_heads();
  if (a.latent()) {
    const auto& l = *a.latent();
    c["head_dim"] = l.qk_rope_head_dim();  // as DeepseekV2Config / DeepseekV3Config set it
    c["q_lora_rank"] =
        l.q_lora_rank() > 0 ? nlohmann::ordered_json(l.q_lora_rank()) : nlohmann::ordered_json();
    c["kv_lora_rank"] = l.kv_lora_rank();
    c["qk_nope_head_dim"] = l.qk_nope_head_dim();
    c["qk_rope_head_dim"] = l.qk_rope_head_dim();
    c["v_head_dim"] = l.v_head_dim();
  } else {
    c["head_dim"] = a.head_dim();
  }
  if (type == "deepseek_v3") {
    c["rope_interleave"] = a.rope_interleaved();
  }
  if (type == "glm4_moe") {
    c["partial_rotary_factor"] =
        static_cast<double>(a.rotary_width()) / static_cast<double>(a.head_dim());
    c["use_qk_norm"] = a.qk_norm() == QKNorm::kPerHead;
  }
  if (a.yarn() && !c.contains("rope_scaling") && !c.contains("rope_parameters")) {
    // A model built in C++ with YaRN; a loaded one keeps the config's own rope entry.
    const auto& y = *a.yarn();
    nlohmann::ordered_json r;
    r["type"] = "yarn";
    r["factor"] = y.factor();
    r["original_max_position_embeddings"] = y.original_max_position_embeddings();
    r["beta_fast"] = y.beta_fast();
    r["beta_slow"] = y.beta_slow();
    if (y.mscale() != 0.0) {
      r["mscale"] = y.mscale();
    }
    if (y.mscale_all_dim() != 0.0) {
      r["mscale_all_dim"] = y.mscale_all_dim();
    }
    if (y.attention_factor() > 0.0) {
      r["attention_factor"] = y.attention_factor();
    }
    c["rope_scaling"] = r;
  }
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
  } else if (type == "glm4_moe") {
    TORCH_CHECK(!a.output_bias(),
                "save: glm4_moe's attention_bias covers q, k and v; the model "
                "has an output projection bias");
    c["attention_bias"] = a.qkv_bias();
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
    if (m.router() == RouterKind::kGroupLimited) {  // DeepSeek-V2/V3, GLM-4.5
      const auto& g = m.groups();
      c["n_group"] = g.num_groups();
      c["topk_group"] = g.groups_kept();
      c["routed_scaling_factor"] = g.scaling();
      if (type == "deepseek_v2" && (!c.contains("topk_method") || g.num_groups() > 1)) {
        c["topk_method"] = g.num_groups() > 1 ? "group_limited_greedy" : "greedy";
      }
    }
  }
  if (type == "qwen2_moe" || type == "qwen3_moe" || is_deepseek_like(type)) {
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
  } else {  // the DeepSeek families and GLM-4.5: the dense layers must be the first k
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
    if (type == "deepseek" || type == "deepseek_v2") {
      c["moe_layer_freq"] = 1;
    }
  }
  if (type == "qwen2_moe") {
    c["shared_expert_intermediate_size"] = o.shared_expert_size();
  } else if (is_deepseek_like(type)) {
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
