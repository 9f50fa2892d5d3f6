// DeepSeek-MoE 16B: the hub's remote modeling_deepseek.py and configuration_deepseek.py.
#include "models/lm/families/deepseek.h"

#include <c10/util/Exception.h>

#include <memory>

namespace moeprune::lm {

std::string DeepSeek::summary() const {
  return architecture() +
         "; first_k_dense_replace dense, then MoE every moe_layer_freq; softmax top-k; SwiGLU "
         "experts; n_shared_experts shared experts";
}

bool DeepSeek::is_moe_layer(const hf::Config& config, int64_t i) const {
  const int64_t freq = config.integer("moe_layer_freq", 1);
  TORCH_CHECK(freq >= 1, config.path(), ": moe_layer_freq should be >= 1, got ", freq);
  return i >= config.integer("first_k_dense_replace", 0) && i % freq == 0;
}

void DeepSeek::read_widths(const hf::Config& config, CausalLMOptions& o) const {
  o.intermediate_size(config.integer("intermediate_size", 0));
  const int64_t shared = config.is_set("n_shared_experts")     ? config.integer("n_shared_experts")
                         : config.contains("n_shared_experts") ? 0
                                                               : shared_experts_default();
  o.shared_expert_size(shared * config.integer("moe_intermediate_size"));
}

void DeepSeek::read_model(const hf::Config& config, CausalLMOptions& o) const {
  read_widths(config, o);
  if (config.is_set("topk_method") && config.text("topk_method", "greedy") != "greedy") {
    detail::refuse(config, "topk_method",
                   "only greedy top-k (DeepSeek-V2's grouped routing is not DeepSeek-MoE)");
  }
  if (config.is_set("routed_scaling_factor") &&
      config.number("routed_scaling_factor", 1.0) != 1.0) {
    detail::refuse(config, "routed_scaling_factor", "scaled routing weights");
  }
}

void DeepSeek::write_dense_width(const CausalLMOptions& o, nlohmann::ordered_json& c) const {
  c["intermediate_size"] = o.intermediate_size();
}

void DeepSeek::write_moe_layers(const CausalLMOptions& o, nlohmann::ordered_json& c) const {
  // The dense layers must be the first k.
  int64_t k = 0;
  while (k < o.num_layers() && !o.moe_layers()[static_cast<size_t>(k)]) {
    ++k;
  }
  for (int64_t i = k; i < o.num_layers(); ++i) {
    TORCH_CHECK(o.moe_layers()[static_cast<size_t>(i)], "save: ", model_type(),
                "'s dense layers are the first first_k_dense_replace; layer ", i,
                " is dense after MoE layers");
  }
  c["first_k_dense_replace"] = k;
  if (writes_layer_freq()) {
    c["moe_layer_freq"] = 1;
  }
}

void DeepSeek::write_shared_experts(const CausalLMOptions& o, nlohmann::ordered_json& c) const {
  const int64_t width = o.moe().has_value() ? o.moe()->hidden_dim() : 0;
  TORCH_CHECK(width > 0 ? o.shared_expert_size() % width == 0 : o.shared_expert_size() == 0,
              "save: ", model_type(),
              "'s shared experts are n_shared_experts * moe_intermediate_size wide; ",
              o.shared_expert_size(), " is not a multiple of ", width);
  c["n_shared_experts"] = width > 0 ? o.shared_expert_size() / width : 0;
}

std::unique_ptr<Family> make_deepseek() {
  return std::make_unique<DeepSeek>();
}

}  // namespace moeprune::lm
