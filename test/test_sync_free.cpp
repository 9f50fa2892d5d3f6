// The sync-free path (MoELayerOptions::sync_free): fixed-size plans against the loop reference,
// the expert bank on device-side offsets against a row-by-row fp64 reference, and the layer
// against the exact layout's layer (itself checked against references in test_moe_layer*.cpp).
#include "layer_variants.h"
#include "test_helpers.h"

#include <moeprune/layers/moe_layer.h>
#include <moeprune/ops/ops.h>
#include <moeprune/routing/functional/routing.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <string>
#include <vector>

using moeprune::MoELayer;
using moeprune::MoELayerOptions;
using moeprune::RoutingPlan;
using moeprune::functional::CapacityMode;
using moeprune::functional::TopKRoutingOptions;

namespace {

// A fixed-size plan: `bound` rows, the kept ones first, then padding rows of slot -1; its compact
// form is checked against the reference by the caller.
void require_fixed_layout(const RoutingPlan& plan, int64_t bound, int64_t kept) {
  REQUIRE(plan.fixed_rows);
  REQUIRE(plan.num_rows() == bound);
  REQUIRE(plan.num_kept_rows() == kept);
  const auto row_slot = plan.row_slot.contiguous();
  CHECK(row_slot.narrow(0, 0, kept).ge(0).all().item<bool>());
  CHECK(row_slot.narrow(0, kept, bound - kept).eq(-1).all().item<bool>());
  const auto compact = plan.compact();
  CHECK_FALSE(compact.fixed_rows);
  CHECK(compact.num_rows() == kept);
}

int64_t kept_slots(const naive::Routing& ref) {
  int64_t kept = 0;
  for (const auto& rows : ref.rows_of_expert) {
    kept += static_cast<int64_t>(rows.size());
  }
  return kept;
}

}  // namespace

TEST_CASE("fixed-size top-k plans route as the loop reference, padding after the kept rows",
          "[sync_free]") {
  struct Case {
    int64_t T, E, k, capacity, group;
    bool bpr, renormalize;
  };
  const auto c = GENERATE(Case{24, 6, 2, -1, 0, false, true},  // dropless (Mixtral)
                          Case{24, 6, 2, 3, 0, false, false},  // capacity drops
                          Case{24, 4, 1, 2, 8, true, false},   // groups + Batch Priority Routing
                          Case{1, 8, 2, -1, 0, false, true},   // one token (decoding)
                          Case{0, 4, 1, 2, 0, false, false});  // no token
  INFO("T=" << c.T << " E=" << c.E << " k=" << c.k << " capacity=" << c.capacity);
  const auto probs = test::random_probs(c.T, c.E, static_cast<uint64_t>(c.T * 31 + c.E));
  auto options = TopKRoutingOptions(c.k)
                     .batch_priority(c.bpr)
                     .renormalize(c.renormalize)
                     .group_size(c.group)
                     .fixed_rows(true);
  if (c.capacity > 0) {
    options.capacity_mode(CapacityMode::kFixed).expert_capacity(c.capacity);
  }
  // (to_tensor cannot know the width of an empty matrix.)
  const auto probs_tensor = c.T == 0 ? torch::empty({0, c.E}) : test::to_tensor(probs);
  const auto plan = moeprune::functional::top_k_route(probs_tensor, options);
  const auto ref = naive::top_k(probs, c.k, c.capacity, c.group, c.bpr, c.renormalize);
  // Kept slots are bounded by the slots and by E * capacity per group.
  const int64_t groups = c.group > 0 ? c.T / c.group : 1;
  const int64_t bound = c.capacity > 0 ? std::min(c.T * c.k, c.E * c.capacity * groups) : c.T * c.k;
  require_fixed_layout(plan, bound, kept_slots(ref));
  test::require_matches(plan.compact(), ref);
}

TEST_CASE("fixed-size expert-choice plans route as the loop reference", "[sync_free]") {
  const int64_t T = 16, E = 4, capacity = 3;
  const auto probs = test::random_probs(T, E, 7);
  // capacity_from_factor(16, 1, 0.75, 4, 1) = 3 tokens per expert.
  const auto plan = moeprune::functional::expert_choice_route(test::to_tensor(probs), 0.75, 1, 0,
                                                              {}, -1, /*fixed_rows=*/true);
  const auto ref = naive::expert_choice(probs, capacity, 0);
  require_fixed_layout(plan, E * capacity, E * capacity);  // every expert fills its capacity
  test::require_matches(plan.compact(), ref);
}

TEST_CASE("fixed-size plans with pruned and merged banks keep the exact plan's rows",
          "[sync_free]") {
  const int64_t T = 20, E = 6;
  torch::manual_seed(3);
  const auto probs = torch::randn({T, E}).softmax(-1);
  // Pruned (experts 1 and 4 gone) and merged ({0, 5}, {2, 3}: not increasing in router order).
  const auto map =
      GENERATE(std::vector<int64_t>{0, -1, 1, 2, -1, 3}, std::vector<int64_t>{0, -1, 1, 1, -1, 0});
  const int64_t bank = *std::max_element(map.begin(), map.end()) + 1;
  const auto map_tensor = torch::tensor(map, torch::kLong);
  const auto capacity = GENERATE(-1, 4);
  INFO("bank " << bank << " capacity " << capacity);
  auto options = TopKRoutingOptions(2);
  if (capacity > 0) {
    options.capacity_mode(CapacityMode::kFixed).expert_capacity(capacity);
  }
  const auto exact = moeprune::functional::top_k_route(probs, options, map_tensor, bank);
  const auto fixed =
      moeprune::functional::top_k_route(probs, options.fixed_rows(true), map_tensor, bank);
  REQUIRE(fixed.num_rows() == (capacity > 0 ? std::min(T * 2, E * capacity) : T * 2));
  // Slots routed to a pruned expert are dropped, so padding remains even when dropless.
  REQUIRE(fixed.num_kept_rows() == exact.num_rows());
  CHECK(fixed.num_kept_rows() < fixed.num_rows());
  CHECK(torch::equal(fixed.slot_row, exact.slot_row));
  CHECK(torch::equal(fixed.expert_counts, exact.expert_counts));
  CHECK(torch::equal(fixed.expert_offsets, exact.expert_offsets));
  CHECK(torch::equal(fixed.compact().row_slot, exact.row_slot));
  CHECK(fixed.dropped_fraction() == exact.dropped_fraction());
}

TEST_CASE("dispatch writes zeros for padding rows and combine's backward gives them no gradient",
          "[sync_free]") {
  // Two tokens, one slot each; rows: token 1, token 0, then one padding row.
  const auto x = torch::tensor({{1.0, 2.0}, {3.0, 4.0}}).requires_grad_(true);
  const auto slot_row = torch::tensor({{1}, {0}}, torch::kLong);
  const auto row_slot = torch::tensor({1, 0, -1}, torch::kLong);
  const auto rows = moeprune::ops::dispatch(x, slot_row, row_slot);
  CHECK(torch::equal(rows.detach(), torch::tensor({{3.0, 4.0}, {1.0, 2.0}, {0.0, 0.0}})));
  const auto y = (rows * 10.0).detach().requires_grad_(true);
  const auto w = torch::tensor({{0.5}, {2.0}}, torch::kDouble).to(torch::kFloat);
  const auto out = moeprune::ops::combine(y, w, slot_row, row_slot);
  // out[0] = 0.5 * y[1] = (5, 10); out[1] = 2 * y[0] = (60, 80).
  CHECK(torch::equal(out.detach(), torch::tensor({{5.0, 10.0}, {60.0, 80.0}})));
  out.backward(torch::ones_like(out));
  CHECK(torch::equal(y.grad(), torch::tensor({{2.0, 2.0}, {0.5, 0.5}, {0.0, 0.0}})));
  rows.backward(torch::ones_like(rows));
  CHECK(torch::equal(x.grad(), torch::ones({2, 2})));
  // Other negative slots are still refused.
  CHECK_THROWS_WITH(
      moeprune::ops::dispatch(x.detach(), slot_row, torch::tensor({1, 0, -2}, torch::kLong)),
      Catch::Contains("row_slot[2] = -2 is outside the slots [0, 2) and not -1 (padding)"));
}

TEST_CASE("the expert bank on device-side offsets equals a row-by-row fp64 reference",
          "[sync_free]") {
  using moeprune::ExpertKind;
  const auto kind = GENERATE(ExpertKind::kMlp, ExpertKind::kGated);
  // d 16 and F 32 in fp32 take the grouped GEMM; d 6 the per-expert loop.
  const auto d = GENERATE(int64_t{16}, int64_t{6});
  const int64_t E = 4, F = 32;
  torch::manual_seed(11);
  moeprune::ExpertBank bank(moeprune::ExpertBankOptions(E, d, F).kind(kind).activation(
      moeprune::ExpertActivation::kGelu));
  // Experts hold 3, 0, 4 and 2 rows, then 3 padding rows.
  const std::vector<int64_t> counts{3, 0, 4, 2};
  const auto offsets = torch::tensor({0, 3, 3, 7, 9}, torch::kLong);
  const int64_t R = 12;
  const auto rows = torch::randn({R, d});
  INFO("gated " << (kind == ExpertKind::kGated) << " d " << d);
  CHECK(bank->grouped_gemm_supported(rows) == (d == 16));
  const auto out = bank->forward_offsets(rows, offsets);
  REQUIRE(out.sizes() == torch::IntArrayRef({R, d}));

  const auto w1 = bank->w1.to(torch::kDouble), w2 = bank->w2.to(torch::kDouble);
  int64_t r = 0;
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t i = 0; i < counts[static_cast<size_t>(e)]; ++i, ++r) {
      const auto x = rows[r].to(torch::kDouble).unsqueeze(0);
      torch::Tensor h;
      if (kind == ExpertKind::kGated) {
        h = torch::gelu(x.mm(w1[e])) * x.mm(bank->w3[e].to(torch::kDouble));
      } else {
        h = torch::gelu(x.mm(w1[e]) + bank->b1[e].to(torch::kDouble));
      }
      auto y = h.mm(w2[e]);
      if (kind != ExpertKind::kGated) {
        y = y + bank->b2[e].to(torch::kDouble);
      }
      INFO("row " << r << " expert " << e);
      CHECK(torch::allclose(out[r].to(torch::kDouble), y.squeeze(0), 1e-5, 1e-5));
    }
  }
  // Gradients flow to the rows the experts read and to their weights.
  const auto x = rows.clone().requires_grad_(true);
  bank->forward_offsets(x, offsets).narrow(0, 0, 9).sum().backward();
  CHECK(x.grad().narrow(0, 0, 9).abs().sum().item<double>() > 0.0);
  CHECK(bank->w1.grad()[1].abs().sum().item<double>() == 0.0);  // expert 1 had no rows
  CHECK(bank->w1.grad()[2].abs().sum().item<double>() > 0.0);
}

TEST_CASE("a sync-free layer equals the exact-layout layer, forward and backward", "[sync_free]") {
  // Every preset but E3-MoE (refused below), group-limited routing with 2 groups of which 1 is
  // kept, and V-MoE with a capacity that drops (test/layer_variants.h).
  const auto preset =
      GENERATE(as<std::string>{}, "vmoe", "expert_choice", "switch", "top_k_gated",
               "group_limited_softmax", "group_limited_sigmoid", "group_limited_softmax+groups",
               "group_limited_sigmoid+groups", "vmoe+drops");
  const auto shape = GENERATE(as<std::string>{}, "plain", "pruned", "merged");
  INFO(preset << " " << shape);
  const int64_t d = 16, F = 32, E = 8;
  auto base = test::layer_options(preset, d, F, E);
  if (preset == "switch") {
    base.routing().expert_capacity(3);  // drops at this size
  }
  torch::manual_seed(5);
  MoELayer exact(base);
  MoELayer sync_free(MoELayerOptions(base).sync_free(true).check_finite(false));
  test::init_variant(exact, preset);
  test::init_variant(sync_free, preset);
  {
    torch::NoGradGuard no_grad;
    const auto from = exact->named_parameters();
    for (auto& p : sync_free->named_parameters()) {
      p.value().copy_(from[p.key()]);
    }
  }
  if (shape == "pruned") {
    for (auto* layer : {&exact, &sync_free}) {
      (*layer)->keep_experts(test::kept_experts(preset, {0, 2, 3, 5, 6, 7}));
    }
  } else if (shape == "merged") {
    // {0, 4} joins experts of two routing groups in the "+groups" presets: the router keeps its
    // columns, so each member still routes within its own group (test_merging.cpp).
    for (auto* layer : {&exact, &sync_free}) {
      (*layer)->merge_experts({{0, 4}, {1}, {2, 7}, {3, 5, 6}});
    }
  }
  const auto input = torch::randn({2, 12, d});
  auto run = [&](MoELayer& layer) {
    layer->train();
    torch::manual_seed(9);  // the same noise and jitter draws
    const auto x = input.clone().requires_grad_(true);
    auto out = layer->forward(x);
    (out.output.pow(2).sum() + out.aux_loss).backward();
    return std::make_pair(out, x.grad());
  };
  const auto [a, ga] = run(exact);
  const auto [b, gb] = run(sync_free);
  CHECK(b.plan.fixed_rows);
  if (preset == "switch" || preset == "vmoe+drops") {
    CHECK(a.plan.dropped_fraction() > 0.0);  // the capacity path really ran
  }
  if (preset.find("+groups") != std::string::npos && shape == "plain") {
    // Every token's experts come from one group of 4 (topk_group 1): the groups were masked.
    const auto group = a.plan.expert_index.div(4, "floor");
    CHECK(torch::equal(group, group.narrow(1, 0, 1).expand_as(group)));
  }
  CHECK(torch::equal(a.plan.slot_row, b.plan.slot_row));
  CHECK(torch::allclose(a.output, b.output, 1e-5, 1e-6));
  CHECK(torch::allclose(a.aux_loss, b.aux_loss, 1e-6, 1e-7));
  CHECK(torch::allclose(ga, gb, 1e-5, 1e-6));
  const auto grads = exact->named_parameters();
  for (const auto& p : sync_free->named_parameters()) {
    INFO(p.key());
    REQUIRE(p.value().grad().defined() == grads[p.key()].grad().defined());
    if (p.value().grad().defined()) {
      CHECK(torch::allclose(p.value().grad(), grads[p.key()].grad(), 1e-5, 1e-6));
    }
  }
}

TEST_CASE("a sync-free layer hands calibration the exact layout", "[sync_free]") {
  MoELayer layer(MoELayerOptions::preset("switch", 16, 32, 4).sync_free(true).check_finite(false));
  std::vector<moeprune::MoELayerCall> calls;
  layer->set_capture(&calls, /*with_inputs=*/false);
  layer->eval();
  // 260 tokens, 4 experts of capacity 64: at least 4 dropped; the bound is 4 * 64 rows.
  const auto out = layer->forward(torch::randn({1, 260, 16}));
  REQUIRE(calls.size() == 1);
  CHECK_FALSE(calls[0].plan.fixed_rows);
  CHECK(calls[0].plan.num_rows() == out.plan.num_kept_rows());
  CHECK(out.plan.num_rows() == 4 * 64);
  CHECK(out.plan.num_kept_rows() < out.plan.num_rows());
}

TEST_CASE("sync_free refuses the finite checks and the ensemble router", "[sync_free]") {
  CHECK_THROWS_WITH(MoELayer(MoELayerOptions::preset("top_k_gated", 8, 16, 4).sync_free(true)),
                    Catch::Contains("sync_free needs check_finite(false)"));
  CHECK_THROWS_WITH(
      MoELayer(MoELayerOptions::preset("e3moe", 8, 16, 4).sync_free(true).check_finite(false)),
      Catch::Contains("sync_free is not available with the ensemble router"));
}
