#pragma once

#include "models/lm/families/mlp_experts.h"

namespace moeprune::lm {

/// Qwen2-MoE (modeling_qwen2_moe.py): layers in mlp_only_layers are dense, the others MoE when
/// (i + 1) % decoder_sparse_step == 0; q/k/v biases (qkv_bias); a shared expert of
/// shared_expert_intermediate_size with a sigmoid gate beside the routed ones.
class Qwen2Moe : public MlpExpertsFamily {
 public:
  std::string model_type() const override { return "qwen2_moe"; }
  std::string architecture() const override { return "Qwen2MoeForCausalLM"; }
  std::string summary() const override;
  std::string experts_key() const override { return "num_experts"; }
  std::string width_key() const override { return "moe_intermediate_size"; }
  std::string shared_expert() const override { return "shared_expert"; }

  void read_attention(const hf::Config& config, AttentionOptions& attention) const override;
  void read_model(const hf::Config& config, CausalLMOptions& options) const override;
  void write_attention(const AttentionOptions& attention, nlohmann::ordered_json& c) const override;
  void write_dense_width(const CausalLMOptions& options, nlohmann::ordered_json& c) const override;
  void write_moe_layers(const CausalLMOptions& options, nlohmann::ordered_json& c) const override;
  void write_shared_experts(const CausalLMOptions& options,
                            nlohmann::ordered_json& c) const override;

 protected:
  bool is_moe_layer(const hf::Config& config, int64_t i) const override;
};

}  // namespace moeprune::lm
