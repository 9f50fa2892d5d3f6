#pragma once

// Layer configurations that the presets' defaults never reach, shared by the CPU, CUDA and
// expert-parallel tests (header-only: each of those is its own binary).
//   "<preset>+groups"  group-limited routing with several groups: 8 experts in n_group 2 groups
//                      of 4, topk_group 1 (each token's experts come from its best group, the
//                      other is masked before top-k), routed_scaling_factor 2.5 and, for
//                      group_limited_sigmoid (DeepSeek-V3's), a non-zero correction bias
//                      (init_variant). The presets use one group, where group-limited routing is
//                      plain top-k. Pruned, such a layer keeps its groups equal (kept_experts).
//   "<preset>+drops"   a capacity under the load (switch: 1 token per expert and item, so any two
//                      tokens of an item choosing one expert drop; vmoe: capacity factor 0.5, half
//                      the slots), so tokens really drop; the presets' capacities rarely do at
//                      test sizes.
#include <moeprune/layers/moe_layer.h>

#include <torch/torch.h>

#include <string>
#include <vector>

namespace test {

/// The presets, then the variants above.
inline std::vector<std::string> layer_variant_names() {
  auto names = moeprune::MoELayerOptions::preset_names();
  for (const char* v : {"group_limited_softmax+groups", "group_limited_sigmoid+groups",
                        "switch+drops", "vmoe+drops"}) {
    names.emplace_back(v);
  }
  return names;
}

/// The options of preset or variant `name` (see the top of this file).
inline moeprune::MoELayerOptions layer_options(const std::string& name, int64_t d_model,
                                               int64_t hidden_dim, int64_t num_experts) {
  const auto plus = name.find('+');
  const auto preset = name.substr(0, plus);
  const auto variant = plus == std::string::npos ? std::string() : name.substr(plus + 1);
  auto options = moeprune::MoELayerOptions::preset(preset, d_model, hidden_dim, num_experts);
  if (variant.empty()) {
    return options;
  }
  if (variant == "groups") {
    TORCH_CHECK(std::holds_alternative<moeprune::GroupLimitedRouterConfig>(options.router()),
                "layer variant '", name, "': +groups needs a group-limited preset");
    TORCH_CHECK(num_experts == 8, "layer variant '", name, "': +groups is made for 8 experts");
    options.router_as<moeprune::GroupLimitedRouterConfig>()
        .groups()
        .num_groups(2)
        .groups_kept(1)
        .scaling(2.5);
  } else if (variant == "drops" && preset == "switch") {
    options.routing().expert_capacity(1);
  } else if (variant == "drops" && preset == "vmoe") {
    options.routing().capacity_factor(0.5);
  } else {
    TORCH_CHECK(false, "unknown layer variant '", name, "'");
  }
  return options;
}

/// The experts a test keeps when it prunes layer `name` (8 experts): `usual` for the presets and
/// +drops; for +groups {0, 1, 2, 4, 5, 6}, one expert less in each group of 4 (a group-limited
/// router keeps its groups equal, and V3's group score needs two experts in each).
inline std::vector<int64_t> kept_experts(const std::string& name, std::vector<int64_t> usual) {
  if (name.find("+groups") != std::string::npos) {
    return {0, 1, 2, 4, 5, 6};
  }
  return usual;
}

/// Sets the state that options cannot carry: for "group_limited_sigmoid+groups", a correction bias
/// of fixed non-zero values in [-0.1, 0.1] (large enough to change which groups and experts win
/// against sigmoid scores in (0, 1)). No random draw, so layers built alike get the same bias.
inline void init_variant(moeprune::MoELayer& layer, const std::string& name) {
  if (name != "group_limited_sigmoid+groups") {
    return;
  }
  auto buffers = layer->named_buffers();
  auto* bias = buffers.find("router.e_score_correction_bias");
  TORCH_CHECK(bias != nullptr, "layer variant '", name, "': the router has no correction bias");
  const int64_t E = bias->size(0);
  const auto values = torch::arange(E, torch::kLong).mul(5).remainder(7).sub(3).to(torch::kFloat);
  torch::NoGradGuard no_grad;
  bias->copy_(values.div(30.0));
}

}  // namespace test
