#pragma once

// What a MoE layer's router is and how it routes: one struct per router, holding only the fields
// that router reads, and RouterConfig, the variant of them a MoELayerOptions carries. The layer
// adds the sizes (d_model, num_experts) and its own switches (check_finite, sync_free) when it
// builds the router module (make_router, moe_layer.h).
#include <moeprune/routing/functional/routing.h>
#include <moeprune/routing/group_limited_router.h>

#include <torch/arg.h>

#include <string>
#include <variant>

namespace moeprune {

/// Token-choice top-k over all E experts (V-MoE, Switch, Mixtral and the families reusing its
/// layer): TopKRouter.
struct TopKRouterConfig {
  /// k, capacity, Batch Priority Routing, renormalisation and routing groups.
  TORCH_ARG(functional::TopKRoutingOptions, routing) = functional::TopKRoutingOptions(2);
  /// Logit noise while training, in units of 1/E (V-MoE: 1).
  TORCH_ARG(double, noise_std) = 0.0;
  /// Multiplicative router-input jitter while training (Switch: 0.01).
  TORCH_ARG(double, jitter) = 0.0;
  /// Route each item of a [B, S, d] input as its own group (Switch: capacity per sequence).
  TORCH_ARG(bool, group_per_item) = false;
};

/// Expert choice (Zhou et al. 2022): ExpertChoiceRouter. Each expert takes
/// C = ceil(S * capacity_factor / E) tokens of a group, rounded up to capacity_multiple.
struct ExpertChoiceRouterConfig {
  TORCH_ARG(double, capacity_factor) = 2.0;
  TORCH_ARG(int64_t, capacity_multiple) = 4;
  /// Tokens per routing group; 0: all tokens form one group.
  TORCH_ARG(int64_t, group_size) = 0;
  /// Logit noise while training, in units of 1/E.
  TORCH_ARG(double, noise_std) = 0.0;
};

/// E3-MoE's ensemble (Allingham et al. 2021): EnsembleRouter. Member m routes among its own
/// E/members experts with `routing` (k per member).
struct EnsembleRouterConfig {
  TORCH_ARG(int64_t, members) = 2;
  TORCH_ARG(functional::TopKRoutingOptions, routing) = functional::TopKRoutingOptions(1);
  /// Logit noise while training, in units of 1/(E/members).
  TORCH_ARG(double, noise_std) = 0.0;
};

/// Group-limited top-k (DeepSeek-V2/V3, GLM-4.5, Kimi-K2): GroupLimitedRouter.
struct GroupLimitedRouterConfig {
  /// k, capacity (DeepSeek: dropless) and renormalisation (norm_topk_prob).
  TORCH_ARG(functional::TopKRoutingOptions, routing) = functional::TopKRoutingOptions(2);
  /// Scores, expert groups, correction bias and scaling.
  TORCH_ARG(GroupLimitedRoutingOptions, groups);
};

using RouterConfig = std::variant<TopKRouterConfig, ExpertChoiceRouterConfig, EnsembleRouterConfig,
                                  GroupLimitedRouterConfig>;

/// The router's name in messages: "top-k", "expert choice", "ensemble", "group-limited".
std::string router_name(const RouterConfig& config);
/// The name of the router a config type configures (router_name's words).
template <class Config>
std::string router_name() {
  return router_name(RouterConfig(Config()));
}

/// The token-choice routing options (k, capacity, renormalisation, groups) of a top-k, ensemble or
/// group-limited router; nullptr for expert choice, which has no k.
functional::TopKRoutingOptions* token_routing(RouterConfig& config);
const functional::TopKRoutingOptions* token_routing(const RouterConfig& config);

/// Whether routing differs between two training forwards on the same input (logit noise or input
/// jitter), which recomputing a forward (gradient checkpointing) cannot allow.
bool adds_training_noise(const RouterConfig& config);
/// Sets the logit noise and input jitter to zero, so training routes as evaluation does.
void remove_training_noise(RouterConfig& config);

/// Sets the capacity factor (token choice: of its routing; expert choice: its own).
void set_capacity_factor(RouterConfig& config, double capacity_factor);
/// Sets the routing group size in tokens (0: one group).
void set_group_size(RouterConfig& config, int64_t group_size);

}  // namespace moeprune
