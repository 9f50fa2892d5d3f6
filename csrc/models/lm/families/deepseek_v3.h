#pragma once

#include "models/lm/families/deepseek_v2.h"

namespace moeprune::lm {

/// DeepSeek-V3 (modeling_deepseek_v3.py) = DeepSeek-V2 + DeepseekV3TopkRouter (sigmoid scores,
/// e_score_correction_bias for the choice, groups ranked by the sum of their top two,
/// norm_topk_prob) + YaRN's mscale in the softmax scale + num_nextn_predict_layers skipped on
/// load; balancing without an auxiliary loss. Kimi-K2 ships this layout.
class DeepSeekV3 : public DeepSeekV2 {
 public:
  std::string model_type() const override { return "deepseek_v3"; }
  std::string architecture() const override { return "DeepseekV3ForCausalLM"; }
  std::string summary() const override;
  // Auxiliary-loss-free balancing: the correction bias, updated outside the gradient.
  FamilyDefaults defaults() const override { return {1e-6, 10000.0, 0.0}; }
  std::string prediction_layers_key() const override { return "num_nextn_predict_layers"; }

  void read_attention(const hf::Config& config, AttentionOptions& attention) const override;
  void write_rotary(const AttentionOptions& attention, nlohmann::ordered_json& c) const override;
  void write_routing(const MoELayerOptions& moe, nlohmann::ordered_json& c) const override;

 protected:
  bool norm_topk_prob_default() const override { return true; }
  bool router_has_bias() const override { return true; }
  int64_t shared_experts_default() const override { return 1; }
  int64_t first_dense_default() const override { return 3; }
  bool writes_layer_freq() const override { return false; }
  GroupDefaults group_defaults() const override { return {8, 4, 2.5}; }
  void read_scores(const hf::Config& config, GroupLimitedRoutingOptions& groups,
                   hf::ModelInfo& info) const override;
};

}  // namespace moeprune::lm
