// DeepSeek-V3: transformers' modeling_deepseek_v3.py and configuration_deepseek_v3.py.
#include "models/lm/families/deepseek_v3.h"

#include <moeprune/models/lm/rotary.h>

#include <c10/util/Exception.h>

#include <cmath>
#include <memory>

namespace moeprune::lm {

std::string DeepSeekV3::summary() const {
  return architecture() +
         "; first_k_dense_replace dense, then MoE; sigmoid with correction bias, groups by "
         "top-two sum, scaled; SwiGLU experts; shared experts; latent attention";
}

void DeepSeekV3::read_scores(const hf::Config& config, GroupLimitedRoutingOptions& g,
                             hf::ModelInfo& /*info*/) const {
  const auto scoring = config.text("scoring_func", "sigmoid");
  TORCH_CHECK(scoring == "sigmoid", config.path(), ": scoring_func \"", scoring,
              "\" is not supported for ", model_type(), " (transformers uses sigmoid)");
  g.score_function(ScoreFunction::kSigmoid)
      .group_score(GroupScore::kTopTwoSum)
      .correction_bias(true);
}

void DeepSeekV3::read_attention(const hf::Config& config, AttentionOptions& attention) const {
  read_latent(config, attention);
  DeepSeek::read_attention(config, attention);
  attention.rope_interleaved(config.flag("rope_interleave", true));
  // DeepseekV3Attention: the softmax scale takes YaRN's mscale(factor, mscale_all_dim)^2.
  if (attention.yarn() && attention.yarn()->mscale_all_dim() != 0.0) {
    const double m = yarn_mscale(attention.yarn()->factor(), attention.yarn()->mscale_all_dim());
    attention.softmax_scale(m * m / std::sqrt(static_cast<double>(attention.head_dim())));
  }
}

void DeepSeekV3::write_rotary(const AttentionOptions& a, nlohmann::ordered_json& c) const {
  c["rope_interleave"] = a.rope_interleaved();
}

void DeepSeekV3::write_routing(const MoELayerOptions& moe, nlohmann::ordered_json& c) const {
  DeepSeek::write_routing(moe, c);
  if (std::holds_alternative<GroupLimitedRouterConfig>(moe.router())) {
    write_groups(moe, c);
  }
}

std::unique_ptr<Family> make_deepseek_v3() {
  return std::make_unique<DeepSeekV3>();
}

}  // namespace moeprune::lm
