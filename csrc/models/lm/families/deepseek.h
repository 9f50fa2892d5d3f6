#pragma once

#include "models/lm/families/mlp_experts.h"

namespace moeprune::lm {

/// DeepSeek-MoE 16B (the hub's remote modeling_deepseek.py / configuration_deepseek.py): the
/// first first_k_dense_replace layers dense, then every layer with i % moe_layer_freq == 0 MoE;
/// softmax top-k; n_shared_experts shared experts of moe_intermediate_size each, beside the
/// routed ones; DeepSeek's load-balancing weight is aux_loss_alpha.
class DeepSeek : public MlpExpertsFamily {
 public:
  std::string model_type() const override { return "deepseek"; }
  std::string architecture() const override { return "DeepseekForCausalLM"; }
  std::string summary() const override;
  std::string experts_key() const override { return "n_routed_experts"; }
  std::string width_key() const override { return "moe_intermediate_size"; }
  std::string shared_expert() const override { return "shared_experts"; }
  std::string aux_loss_key() const override { return "aux_loss_alpha"; }

  void read_model(const hf::Config& config, CausalLMOptions& options) const override;
  void write_dense_width(const CausalLMOptions& options, nlohmann::ordered_json& c) const override;
  void write_moe_layers(const CausalLMOptions& options, nlohmann::ordered_json& c) const override;
  void write_shared_experts(const CausalLMOptions& options,
                            nlohmann::ordered_json& c) const override;

 protected:
  bool is_moe_layer(const hf::Config& config, int64_t i) const override;
  /// n_shared_experts when config.json leaves it out (null: none).
  virtual int64_t shared_experts_default() const { return 0; }
  /// Whether config.json's layer placement includes moe_layer_freq.
  virtual bool writes_layer_freq() const { return true; }
  /// Reads the dense width and the shared experts.
  void read_widths(const hf::Config& config, CausalLMOptions& options) const;
};

}  // namespace moeprune::lm
