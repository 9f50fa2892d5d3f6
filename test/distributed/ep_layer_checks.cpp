// ep_worker's layer checks: every preset and placement, the sharded layer against one process;
// also group-limited routing with several groups and capacities that drop (test/layer_variants.h).
#include "../layer_variants.h"
#include "ep_checks.h"

#include <moeprune/distributed/expert_parallel.h>
#include <moeprune/layers/moe_layer.h>

#include <torch/torch.h>

#include <algorithm>
#include <string>
#include <vector>

namespace ep_checks {
namespace {

using moeprune::MoELayer;
using moeprune::MoELayerImpl;

// The gradient of parameter `name` of held expert `id` (zeros when no row reached the bank).
torch::Tensor expert_grad(const moeprune::ExpertBank& bank, const std::string& name, int64_t id) {
  const auto& ids = bank->expert_ids();
  const auto at = std::find(ids.begin(), ids.end(), id) - ids.begin();
  const auto param = bank->named_parameters()[name];
  return param.grad().defined() ? param.grad()[at] : torch::zeros_like(param[at]);
}

}  // namespace

std::string check_layer(const Case& c, const dist::ProcessGroup& group) {
  const int64_t W = group.world_size(), r = group.rank();
  const int64_t items = 4, seq = 6, d = 16, F = 32, E = 8;
  torch::manual_seed(11);
  MoELayer full(test::layer_options(c.preset, d, F, E));
  test::init_variant(full, c.preset);
  if (c.placement == "pruned") {
    full->keep_experts(test::kept_experts(c.preset, {0, 1, 2, 4, 5, 6, 7}));
  }
  // Each rank's tokens are its own routing group(s), as the sharded layer routes them.
  full->set_group_size(items * seq);
  full->eval();  // no noise: both layers route alike
  MoELayer reference(std::dynamic_pointer_cast<MoELayerImpl>(full->clone()));

  torch::manual_seed(100);
  const auto X = torch::randn({W * items, seq, d});
  const auto G = torch::randn({W * items, seq, d});
  const auto x_all = X.clone().requires_grad_(true);
  const auto ref = reference->forward(x_all);
  const auto& ref_out = ref.output;
  ref_out.backward(G);
  if (c.preset.find("+drops") != std::string::npos && ref.plan.dropped_fraction() == 0.0) {
    return "the reference dropped no token, so the case does not test capacity";
  }

  dist::ExpertPlacement placement;
  if (c.placement == "interleaved") {
    for (int64_t b = 0; b < full->experts()->num_held(); ++b) {
      placement.rank_of.push_back(b % W);
    }
  }
  dist::shard_experts(full, group, placement);
  const auto x = X.narrow(0, r * items, items).clone().requires_grad_(true);
  const auto out = full->forward(x).output;
  out.backward(G.narrow(0, r * items, items));

  if (!torch::equal(out, ref_out.narrow(0, r * items, items))) {
    return "output differs (max " +
           std::to_string((out - ref_out.narrow(0, r * items, items)).abs().max().item<double>()) +
           ")";
  }
  if (!torch::equal(x.grad(), x_all.grad().narrow(0, r * items, items))) {
    return "input gradient differs";
  }
  for (const int64_t id : full->experts()->expert_ids()) {
    for (const auto& p : full->experts()->named_parameters()) {
      if (!torch::equal(expert_grad(full->experts(), p.key(), id),
                        expert_grad(reference->experts(), p.key(), id))) {
        return "expert " + std::to_string(id) + " " + p.key() + " gradient differs";
      }
    }
  }
  const auto reference_params = reference->named_parameters();
  for (const auto& p : full->named_parameters()) {
    if (p.key().rfind("router.", 0) != 0) {
      continue;
    }
    std::vector<torch::Tensor> summed{p.value().grad().clone()};
    group.all_reduce_sum_(summed);
    const auto want = reference_params[p.key()].grad();
    if (!torch::allclose(summed[0], want, 1e-5, 1e-6)) {
      return "router " + p.key() + " gradient summed over ranks differs";
    }
  }
  return "";
}

std::vector<Case> layer_cases() {
  std::vector<Case> cases;
  for (const auto& preset : test::layer_variant_names()) {
    for (const std::string placement : {"even", "pruned", "interleaved"}) {
      if (preset == "e3moe" && placement != "even") {
        continue;  // members keep equal expert counts in contiguous blocks
      }
      cases.push_back({preset, placement});
    }
  }
  return cases;
}

}  // namespace ep_checks
