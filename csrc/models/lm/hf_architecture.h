#pragma once

// How each Hugging Face family spells a CausalLM: config.json keys (read and written) and tensor
// names. One table per family in hf_architecture.cpp; the MoE layers' own tensors (router and
// experts) are hf::Family's.
#include <moeprune/models/lm/options.h>

#include "hf/config.h"

#include <nlohmann/json.hpp>

#include <string>

namespace moeprune::lm::detail {

/// Tensor names of one family.
struct HfNames {
  std::string moe_block;  ///< the MoE block under model.layers.{i}: "block_sparse_moe" / "mlp"
  std::string expert_w1;  ///< expert j's gate, down, up: "w1", "w2", "w3" / "gate_proj", ...
  std::string expert_w2;
  std::string expert_w3;
  std::string shared_expert;  ///< "shared_expert" (Qwen2-MoE), "shared_experts" (DeepSeek), ""
};
HfNames hf_names(const std::string& model_type);

/// The options config.json describes, except moe_layers and moe (the checkpoint's MoE layers
/// give those). Throws naming a key whose value changes the math in a way not implemented (a
/// rope scaling type, a sliding window, partial rotary, ...).
CausalLMOptions options_from_config(const hf::Config& config);

/// config.json for `options`: the keys of options.model_type()'s family, over the keys of
/// options.hf_config() (kept when moeprune does not model them). `num_experts` is the routed
/// expert count to write.
nlohmann::ordered_json config_from_options(const CausalLMOptions& options, int64_t num_experts);

/// The weight of the MoE load-balancing loss (router_aux_loss_coef; DeepSeek's aux_loss_alpha).
double aux_loss_coef(const hf::Config& config);

/// The config key of the routed expert count.
std::string experts_key(const std::string& model_type);

}  // namespace moeprune::lm::detail
