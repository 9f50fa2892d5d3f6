#pragma once

#include "models/lm/families/deepseek.h"

namespace moeprune::lm {

/// DeepSeek-V2 (modeling_deepseek_v2.py) = DeepSeek-MoE + multi-head latent attention (rotary
/// on interleaved pairs, in fp32) + DeepseekV2MoEGate's routing (softmax, greedy or
/// group_limited_greedy, scaled by routed_scaling_factor, never renormalised) - moe_layer_freq
/// (every layer after the first first_k_dense_replace is MoE).
class DeepSeekV2 : public DeepSeek {
 public:
  std::string model_type() const override { return "deepseek_v2"; }
  std::string architecture() const override { return "DeepseekV2ForCausalLM"; }
  std::string summary() const override;

  void read_attention(const hf::Config& config, AttentionOptions& attention) const override;
  void read_model(const hf::Config& config, CausalLMOptions& options) const override;
  void write_routing(const MoELayerOptions& moe, nlohmann::ordered_json& c) const override;
  /// The router keeps its weights as they are: transformers' DeepSeek-V2 softmax renormalises
  /// over the surviving rows by itself (V3's sigmoid scores do not depend on the others).
  void write_cut_config(nlohmann::ordered_json& config) const override;

 protected:
  bool is_moe_layer(const hf::Config& config, int64_t i) const override;
  std::optional<GroupLimitedRoutingOptions> group_routing(const hf::Config& config,
                                                          hf::ModelInfo& info) const override;
  /// first_k_dense_replace, n_group, topk_group and routed_scaling_factor when config.json
  /// leaves them out (the configuration class's defaults).
  virtual int64_t first_dense_default() const { return 0; }
  struct GroupDefaults {
    int64_t num_groups = 1, groups_kept = 1;
    double scaling = 1.0;
  };
  virtual GroupDefaults group_defaults() const { return {}; }
  /// The scores, the group ranking and the correction bias (softmax here); may change
  /// info's norm_topk_prob.
  virtual void read_scores(const hf::Config& config, GroupLimitedRoutingOptions& groups,
                           hf::ModelInfo& info) const;
  /// Multi-head latent attention's ranks and head widths (DeepseekV2Config's defaults).
  static void read_latent(const hf::Config& config, AttentionOptions& attention);
  /// n_group, topk_group, routed_scaling_factor.
  static void write_groups(const MoELayerOptions& moe, nlohmann::ordered_json& c);
};

}  // namespace moeprune::lm
