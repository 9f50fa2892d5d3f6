// What a record does where it says nothing: the keys most families spell alike.
#include "models/lm/families/family.h"

#include <c10/util/Exception.h>

namespace moeprune::lm {

void Family::read_attention(const hf::Config& config, AttentionOptions& attention) const {
  const bool bias = config.flag("attention_bias", false);
  attention.qkv_bias(bias).output_bias(bias);
  if (config.is_set("clip_qkv")) {
    detail::refuse(config, "clip_qkv", "only OLMoE clips q, k and v");
  }
  detail::partial_rotary_factor(config, 1.0, false);
}

void Family::read_model(const hf::Config& /*config*/, CausalLMOptions& /*options*/) const {}

void Family::write_rotary(const AttentionOptions& /*attention*/,
                          nlohmann::ordered_json& /*c*/) const {}

void Family::write_attention(const AttentionOptions& a, nlohmann::ordered_json& c) const {
  TORCH_CHECK(a.qkv_bias() == a.output_bias(), "save: ", model_type(),
              " has one attention_bias for q, k, v and o; the model has qkv_bias ", a.qkv_bias(),
              ", output_bias ", a.output_bias());
  c["attention_bias"] = a.qkv_bias();
}

void Family::write_routing(const MoELayerOptions& moe, nlohmann::ordered_json& c) const {
  c["norm_topk_prob"] = moe.routing().renormalize();
}

void Family::write_dense_width(const CausalLMOptions& /*options*/,
                               nlohmann::ordered_json& /*c*/) const {}

void Family::write_shared_experts(const CausalLMOptions& o, nlohmann::ordered_json& /*c*/) const {
  TORCH_CHECK(o.shared_expert_size() == 0, "save: ", model_type(), " has no shared expert");
}

const Family& family(const std::string& model_type, const std::string& config_path) {
  std::string known;
  for (const auto* f : families()) {
    if (f->model_type() == model_type) {
      return *f;
    }
    known += (known.empty() ? "" : ", ") + f->model_type();
  }
  TORCH_CHECK(false, config_path.empty() ? std::string() : config_path + ": ", "model_type \"",
              model_type, "\" is not a supported language model (", known, ")");
}

namespace detail {

std::vector<int64_t> layer_list(const hf::Config& config, const std::string& key) {
  if (!config.is_set(key)) {
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

}  // namespace detail
}  // namespace moeprune::lm
