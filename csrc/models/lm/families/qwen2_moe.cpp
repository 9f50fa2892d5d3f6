// Qwen2-MoE: transformers' modeling_qwen2_moe.py and configuration_qwen2_moe.py.
#include "models/lm/families/qwen2_moe.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <memory>

namespace moeprune::lm {

std::string Qwen2Moe::summary() const {
  return architecture() +
         "; MoE unless in mlp_only_layers, every decoder_sparse_step; softmax top-k "
         "(norm_topk_prob); SwiGLU experts; gated shared expert";
}

bool Qwen2Moe::is_moe_layer(const hf::Config& config, int64_t i) const {
  const auto dense = detail::layer_list(config, "mlp_only_layers");
  const int64_t step = config.integer("decoder_sparse_step", 1);
  TORCH_CHECK(step >= 1, config.path(), ": decoder_sparse_step should be >= 1, got ", step);
  const int64_t experts = config.integer(count_key(config));
  return std::find(dense.begin(), dense.end(), i) == dense.end() && experts > 0 &&
         (i + 1) % step == 0;
}

void Qwen2Moe::read_attention(const hf::Config& config, AttentionOptions& attention) const {
  MlpExpertsFamily::read_attention(config, attention);
  attention.qkv_bias(config.flag("qkv_bias", true)).output_bias(false);
}

void Qwen2Moe::read_model(const hf::Config& config, CausalLMOptions& o) const {
  o.intermediate_size(config.integer("intermediate_size", 0));
  o.shared_expert_size(config.integer("shared_expert_intermediate_size", 0));
  o.shared_expert_gate(o.shared_expert_size() > 0);
}

void Qwen2Moe::write_attention(const AttentionOptions& a, nlohmann::ordered_json& c) const {
  c["qkv_bias"] = a.qkv_bias();
}

void Qwen2Moe::write_dense_width(const CausalLMOptions& o, nlohmann::ordered_json& c) const {
  c["intermediate_size"] = o.intermediate_size();
}

void Qwen2Moe::write_moe_layers(const CausalLMOptions& o, nlohmann::ordered_json& c) const {
  c["decoder_sparse_step"] = 1;
  c["mlp_only_layers"] = detail::dense_layers(o.moe_layers());
}

void Qwen2Moe::write_shared_experts(const CausalLMOptions& o, nlohmann::ordered_json& c) const {
  c["shared_expert_intermediate_size"] = o.shared_expert_size();
}

std::unique_ptr<Family> make_qwen2_moe() {
  return std::make_unique<Qwen2Moe>();
}

}  // namespace moeprune::lm
