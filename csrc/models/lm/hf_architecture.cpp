#include "models/lm/hf_architecture.h"

#include "models/lm/families/family.h"

#include <moeprune/models/lm/rotary.h>

#include <c10/util/Exception.h>

#include <cmath>
#include <map>
#include <optional>
#include <type_traits>

namespace moeprune::lm::detail {
namespace {

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
    std::string scheme = "default";
    for (const char* scheme_key : {"rope_type", "type"}) {
      if (p.contains(scheme_key)) {
        scheme = nested<std::string>(config, p, key, scheme_key);
      }
    }
    if (scheme != "default" && scheme != "yarn") {
      refuse(config, key, "rope type \"" + scheme + "\"; default RoPE and yarn are implemented");
    }
    if (p.contains("rope_theta")) {
      attention.rope_theta(nested<double>(config, p, key, "rope_theta"));
    }
    if (scheme == "yarn") {
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

}  // namespace

double aux_loss_coef(const hf::Config& config) {
  const auto& f = family(config.text("model_type", ""), config.path());
  return config.number(f.aux_loss_key(), f.defaults().aux_loss_coef);
}

void refuse(const hf::Config& config, const std::string& key, const std::string& why) {
  TORCH_CHECK(false, config.path(), ": \"", key, "\" = ", config.json().at(key).dump(),
              " is not supported (", why, "); moeprune would compute something else");
}

std::vector<int64_t> dense_layers(const std::vector<bool>& moe_layers) {
  std::vector<int64_t> dense;
  for (size_t i = 0; i < moe_layers.size(); ++i) {
    if (!moe_layers[i]) {
      dense.push_back(static_cast<int64_t>(i));
    }
  }
  return dense;
}

double partial_rotary_factor(const hf::Config& config, double fallback, bool allowed) {
  double factor = fallback;
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
  if (!allowed && factor != 1.0) {
    refuse(config, key, "partial rotary embedding outside GLM-4.5");
  }
  TORCH_CHECK(factor > 0.0 && factor <= 1.0, config.path(),
              ": partial_rotary_factor should be in (0, 1], got ", factor);
  return factor;
}

namespace {

// options_from_config() without the JSON type-error net: the keys every family spells alike,
// then the record's own.
CausalLMOptions options_of(const hf::Config& config) {
  const auto type = config.text("model_type", "");
  const auto& f = family(type, config.path());
  const auto defaults = f.defaults();
  const int64_t d = config.integer("hidden_size");
  const int64_t heads = config.integer("num_attention_heads");
  TORCH_CHECK(heads >= 1 && (d % heads == 0 || config.is_set("head_dim")), config.path(),
              ": hidden_size ", d, " is not a multiple of num_attention_heads ", heads);
  const int64_t head_dim = config.is_set("head_dim") ? config.integer("head_dim") : d / heads;
  AttentionOptions attention(d, heads, config.integer("num_key_value_heads", heads), head_dim);
  const double eps = config.number("rms_norm_eps", defaults.rms_norm_eps);
  attention.rms_norm_eps(eps);
  read_rope(config, defaults.rope_theta, attention);
  f.read_attention(config, attention);

  CausalLMOptions o(config.integer("vocab_size"), d, config.integer("num_hidden_layers"),
                    attention);
  o.model_type(type).rms_norm_eps(eps);
  o.max_position_embeddings(config.integer("max_position_embeddings", 4096));
  o.tie_word_embeddings(config.flag("tie_word_embeddings", false));
  o.activation(hf::detail::activation_of(config.text("hidden_act", "silu"), config.path()));
  o.hf_config(config.json().dump());
  if (config.is_set("use_sliding_window") && config.flag("use_sliding_window", false)) {
    refuse(config, "use_sliding_window", "sliding-window attention");
  }
  if (config.is_set("pretraining_tp") && config.integer("pretraining_tp", 1) != 1) {
    refuse(config, "pretraining_tp", "split linear layers");
  }
  f.read_model(config, o);
  o.moe_layers(std::vector<bool>(static_cast<size_t>(o.num_layers()), false));
  return o;
}

}  // namespace

CausalLMOptions options_from_config(const hf::Config& config) {
  return hf::read_checked(config, [&] { return options_of(config); });
}

nlohmann::ordered_json config_from_options(const CausalLMOptions& o, int64_t num_experts) {
  const auto& type = o.model_type();
  const auto& f = family(type);
  auto c = o.hf_config().empty() ? nlohmann::ordered_json::object()
                                 : nlohmann::ordered_json::parse(o.hf_config());
  const auto& a = o.attention();
  c["architectures"] = {f.architecture()};
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
  f.write_rotary(a, c);
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
  f.write_attention(a, c);
  // transformers 5.x writes Qwen-MoE's count as num_local_experts; keep the key the source used.
  const auto key = f.experts_key();
  const bool local_key =
      key != "num_local_experts" && c.contains("num_local_experts") && !c.contains(key);
  c[local_key ? "num_local_experts" : key] = num_experts;
  if (o.moe().has_value()) {
    const auto& m = *o.moe();
    c["num_experts_per_tok"] = m.routing().k();
    c[f.width_key()] = m.hidden_dim();
    f.write_routing(m, c);
  }
  f.write_dense_width(o, c);
  f.write_moe_layers(o, c);
  f.write_shared_experts(o, c);
  return c;
}

}  // namespace moeprune::lm::detail
