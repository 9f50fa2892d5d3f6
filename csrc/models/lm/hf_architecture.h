#pragma once

// config.json <-> CausalLMOptions: the keys every family spells alike, around the calls to the
// family's record (families/<model_type>.cpp) for the rest.
#include <moeprune/models/lm/options.h>

#include "hf/config.h"

#include <nlohmann/json.hpp>

#include <string>

namespace moeprune::lm::detail {

/// The options config.json describes, except moe_layers and moe (the checkpoint's MoE layers
/// give those). Throws naming a key whose value changes the math in a way not implemented (a
/// rope scaling type, a sliding window, partial rotary, ...).
CausalLMOptions options_from_config(const hf::Config& config);

/// config.json for `options`: the keys of options.model_type()'s record, over the keys of
/// options.hf_config() (kept when moeprune does not model them). `num_experts` is the routed
/// expert count to write.
nlohmann::ordered_json config_from_options(const CausalLMOptions& options, int64_t num_experts);

/// The weight of the MoE load-balancing loss (router_aux_loss_coef; DeepSeek's aux_loss_alpha).
double aux_loss_coef(const hf::Config& config);

}  // namespace moeprune::lm::detail
