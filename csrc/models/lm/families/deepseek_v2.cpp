// DeepSeek-V2: transformers' modeling_deepseek_v2.py and configuration_deepseek_v2.py.
#include "models/lm/families/deepseek_v2.h"

#include <c10/util/Exception.h>

#include <memory>

namespace moeprune::lm {

std::string DeepSeekV2::summary() const {
  return architecture() +
         "; first_k_dense_replace dense, then MoE; softmax, greedy or group_limited_greedy, "
         "scaled; SwiGLU experts; shared experts; latent attention";
}

bool DeepSeekV2::is_moe_layer(const hf::Config& config, int64_t i) const {
  return i >= config.integer("first_k_dense_replace", first_dense_default());
}

void DeepSeekV2::read_scores(const hf::Config& config, GroupLimitedRoutingOptions& g,
                             hf::ModelInfo& info) const {
  const auto method = config.text("topk_method", "greedy");
  TORCH_CHECK(method == "greedy" || method == "group_limited_greedy", config.path(),
              ": topk_method \"", method, "\" is not supported for ", model_type(),
              " (greedy, group_limited_greedy)");
  g.score_function(ScoreFunction::kSoftmax).group_score(GroupScore::kMax).correction_bias(false);
  if (method == "greedy") {
    g.num_groups(1).groups_kept(1);
  }
  // transformers' DeepseekV2MoEGate scales and never renormalises (norm_topk_prob unused).
  info.norm_topk_prob = false;
}

std::optional<GroupLimitedRoutingOptions> DeepSeekV2::group_routing(const hf::Config& config,
                                                                    hf::ModelInfo& info) const {
  const auto defaults = group_defaults();
  const auto integer_or = [&](const std::string& key, int64_t fallback) {
    return config.is_set(key) ? config.integer(key) : fallback;
  };
  GroupLimitedRoutingOptions g;
  g.num_groups(integer_or("n_group", defaults.num_groups))
      .groups_kept(integer_or("topk_group", defaults.groups_kept))
      .scaling(config.is_set("routed_scaling_factor")
                   ? config.number("routed_scaling_factor", defaults.scaling)
                   : defaults.scaling);
  read_scores(config, g, info);
  TORCH_CHECK(g.num_groups() >= 1 && info.num_experts % g.num_groups() == 0, config.path(), ": ",
              info.num_experts, " experts do not split into n_group = ", g.num_groups(), " groups");
  TORCH_CHECK(g.groups_kept() >= 1 && g.groups_kept() <= g.num_groups(), config.path(),
              ": topk_group should be in [1, n_group = ", g.num_groups(), "], got ",
              g.groups_kept());
  return g;
}

void DeepSeekV2::read_latent(const hf::Config& config, AttentionOptions& attention) {
  LatentAttentionOptions l;
  l.q_lora_rank(config.is_set("q_lora_rank")     ? config.integer("q_lora_rank")
                : config.contains("q_lora_rank") ? 0
                                                 : 1536)
      .kv_lora_rank(config.integer("kv_lora_rank", 512))
      .qk_nope_head_dim(config.integer("qk_nope_head_dim", 128))
      .qk_rope_head_dim(config.integer("qk_rope_head_dim", 64))
      .v_head_dim(config.integer("v_head_dim", 128));
  // DeepSeek's configuration classes set head_dim to qk_rope_head_dim; the query/key head is
  // qk_nope_head_dim + qk_rope_head_dim.
  attention.head_dim(l.qk_nope_head_dim() + l.qk_rope_head_dim());
  const int64_t heads = attention.num_heads(), kv_heads = attention.num_kv_heads();
  TORCH_CHECK(kv_heads == heads, config.path(), ": num_key_value_heads = ", kv_heads,
              " differs from num_attention_heads = ", heads,
              "; latent attention expands keys and values for every head (transformers would "
              "repeat them)");
  attention.latent(l);
}

void DeepSeekV2::read_attention(const hf::Config& config, AttentionOptions& attention) const {
  read_latent(config, attention);
  DeepSeek::read_attention(config, attention);
  // apply_rotary_emb turns complex pairs, in fp32.
  attention.rope_interleaved(true).rotary_in_fp32(true);
}

void DeepSeekV2::read_model(const hf::Config& config, CausalLMOptions& o) const {
  read_widths(config, o);
}

void DeepSeekV2::write_groups(const MoELayerOptions& moe, nlohmann::ordered_json& c) {
  const auto& g = moe.router_as<GroupLimitedRouterConfig>().groups();
  c["n_group"] = g.num_groups();
  c["topk_group"] = g.groups_kept();
  c["routed_scaling_factor"] = g.scaling();
}

void DeepSeekV2::write_routing(const MoELayerOptions& moe, nlohmann::ordered_json& c) const {
  DeepSeek::write_routing(moe, c);
  const auto* group_limited = std::get_if<GroupLimitedRouterConfig>(&moe.router());
  if (group_limited == nullptr) {
    return;
  }
  write_groups(moe, c);
  const auto& g = group_limited->groups();
  if (!c.contains("topk_method") || g.num_groups() > 1) {
    c["topk_method"] = g.num_groups() > 1 ? "group_limited_greedy" : "greedy";
  }
}

void DeepSeekV2::write_cut_config(nlohmann::ordered_json& /*config*/) const {}

std::unique_ptr<Family> make_deepseek_v2() {
  return std::make_unique<DeepSeekV2>();
}

}  // namespace moeprune::lm
