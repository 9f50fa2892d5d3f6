#include "test_helpers.h"

#include <moeprune/routing/functional/routing.h>
#include <moeprune/routing/top_k_router.h>

#include <algorithm>

using moeprune::functional::capacity_from_factor;
using moeprune::functional::CapacityMode;
using moeprune::functional::top_k_route;
using moeprune::functional::TopKRoutingOptions;

namespace {

TopKRoutingOptions fixed(int64_t k, int64_t capacity) {
  return TopKRoutingOptions(k).capacity_mode(CapacityMode::kFixed).expert_capacity(capacity);
}

std::vector<int64_t> kept_tokens_of(const moeprune::RoutingPlan& plan, int64_t expert) {
  std::vector<int64_t> tokens;
  const int64_t K = plan.slots_per_token();
  for (int64_t r = plan.expert_offsets[expert].item<int64_t>();
       r < plan.expert_offsets[expert + 1].item<int64_t>(); ++r) {
    tokens.push_back(plan.row_slot[r].item<int64_t>() / K);
  }
  return tokens;
}

}  // namespace

TEST_CASE("capacity follows V-MoE: ceil(S k cf / E) rounded up to a multiple of 4") {
  CHECK(capacity_from_factor(10, 2, 1.05, 8) == 4);      // ceil(2.625) = 3 -> 4
  CHECK(capacity_from_factor(1576, 2, 1.05, 8) == 416);  // ceil(413.7) = 414 -> 416
  CHECK(capacity_from_factor(1576, 2, 1.05, 8, 1) == 414);
  CHECK(capacity_from_factor(16, 1, 1.0, 4, 1) == 4);
  CHECK(capacity_from_factor(1, 1, 1.0, 64, 1) == 1);  // never below one slot
  REQUIRE_THROWS_AS(capacity_from_factor(16, 1, 0.0, 4), c10::Error);
  REQUIRE_THROWS_WITH(capacity_from_factor(16, 1, -1.0, 4),
                      Catch::Contains("capacity_factor should be > 0"));
}

TEST_CASE("top-k router drops over-capacity slots in position order without BPR") {
  const naive::Matrix p = {{.6, .4}, {.9, .1}, {.7, .3}, {.8, .2}};
  const auto plan = top_k_route(test::to_tensor(p), fixed(1, 2));
  CHECK(kept_tokens_of(plan, 0) == std::vector<int64_t>{0, 1});
  CHECK(kept_tokens_of(plan, 1).empty());
  CHECK(plan.slot_row[2][0].item<int64_t>() == -1);
  CHECK(plan.slot_row[3][0].item<int64_t>() == -1);
  CHECK(plan.dropped_fraction() == Approx(0.5));
}

TEST_CASE("top-k router serves tokens by top-1 gate with Batch Priority Routing") {
  const naive::Matrix p = {{.6, .4}, {.9, .1}, {.7, .3}, {.8, .2}};
  const auto plan = top_k_route(test::to_tensor(p), fixed(1, 2).batch_priority(true));
  // Tokens 1 (.9) and 3 (.8) win expert 0; rows follow the service order.
  CHECK(kept_tokens_of(plan, 0) == std::vector<int64_t>{1, 3});
  CHECK(plan.slot_row[0][0].item<int64_t>() == -1);
  CHECK(plan.slot_row[2][0].item<int64_t>() == -1);
}

TEST_CASE("top-k router fills every first choice before any second choice") {
  // 1st choices: t0->0, t1->0, t2->1; 2nd: t0->1, t1->1, t2->2. With capacity 2, expert 1
  // takes t2 (1st choice) then t0 (2nd); t1's 2nd choice is the third arrival and drops.
  const naive::Matrix p = {{.5, .3, .2}, {.5, .4, .1}, {.2, .5, .3}};
  const auto plan = top_k_route(test::to_tensor(p), fixed(2, 2));
  CHECK(kept_tokens_of(plan, 0) == std::vector<int64_t>{0, 1});
  CHECK(kept_tokens_of(plan, 1) == std::vector<int64_t>{2, 0});
  CHECK(kept_tokens_of(plan, 2) == std::vector<int64_t>{2});
  CHECK(plan.slot_row[1][1].item<int64_t>() == -1);
  CHECK(plan.combine_weight[0][1].item<float>() == Approx(.3));
}

TEST_CASE("top-k router breaks ties towards the lower expert id") {
  const auto plan = top_k_route(test::to_tensor({{.25, .25, .25, .25}, {.1, .45, .45, 0.}}),
                                TopKRoutingOptions(2));
  CHECK(plan.expert_index[0][0].item<int64_t>() == 0);
  CHECK(plan.expert_index[0][1].item<int64_t>() == 1);
  CHECK(plan.expert_index[1][0].item<int64_t>() == 1);
  CHECK(plan.expert_index[1][1].item<int64_t>() == 2);
}

TEST_CASE("top-k router with one expert sends every token there") {
  const auto plan = top_k_route(torch::ones({5, 1}), TopKRoutingOptions(1));
  CHECK(plan.num_rows() == 5);
  CHECK(plan.expert_counts[0].item<int64_t>() == 5);
  CHECK(plan.combine_weight.eq(1).all().item<bool>());
}

TEST_CASE("top-k router applies capacity per routing group") {
  const naive::Matrix p = {{.9, .1}, {.8, .2}, {.7, .3}, {.6, .4}};
  const auto plan = top_k_route(test::to_tensor(p), fixed(1, 1).group_size(2));
  CHECK(kept_tokens_of(plan, 0) == std::vector<int64_t>{0, 2});
  REQUIRE_THROWS_WITH(top_k_route(test::to_tensor(p), fixed(1, 1).group_size(3)),
                      Catch::Contains("do not split into routing groups of 3"));
}

TEST_CASE("top-k router leaves unchosen experts empty and handles a single token") {
  SECTION("empty experts") {
    const auto plan =
        top_k_route(test::to_tensor({{.1, .7, .1, .1}, {.1, .6, .2, .1}}), TopKRoutingOptions(1));
    CHECK(plan.counts() == std::vector<int64_t>{0, 2, 0, 0});
    CHECK(plan.expert_offsets.eq(torch::tensor({0, 0, 2, 2, 2}, torch::kLong)).all().item<bool>());
  }
  SECTION("one token") {
    const auto plan =
        top_k_route(test::to_tensor({{.2, .5, .3}}), TopKRoutingOptions(2).renormalize(true));
    CHECK(plan.counts() == std::vector<int64_t>{0, 1, 1});
    CHECK(plan.combine_weight[0][0].item<float>() == Approx(.5 / .8));
    CHECK(plan.combine_weight[0][1].item<float>() == Approx(.3 / .8));
  }
  SECTION("no tokens") {
    const auto plan = top_k_route(torch::empty({0, 3}), fixed(2, 4));
    CHECK(plan.num_rows() == 0);
    CHECK(plan.counts() == std::vector<int64_t>{0, 0, 0});
  }
}

TEST_CASE("top-k router matches the loop reference on random inputs") {
  const auto E = GENERATE(1, 3, 8);
  const auto k = GENERATE(1, 2);
  const auto bpr = GENERATE(false, true);
  if (k > E) {
    return;
  }
  for (const int64_t capacity : {-1, 1, 3}) {
    for (const int64_t group : {0, 4}) {
      const int64_t T = 12;
      const auto p = test::random_probs(T, E, 100 * E + 10 * k + capacity + group);
      auto options = TopKRoutingOptions(k).batch_priority(bpr).group_size(group);
      if (capacity > 0) {
        options.capacity_mode(CapacityMode::kFixed).expert_capacity(capacity);
      }
      INFO("E=" << E << " k=" << k << " bpr=" << bpr << " C=" << capacity << " S=" << group);
      test::require_matches(top_k_route(test::to_tensor(p), options),
                            naive::top_k(p, k, capacity, group, bpr, false));
    }
  }
}

TEST_CASE("top-k router with a capacity factor matches the reference at V-MoE's settings") {
  const int64_t T = 40, E = 8, S = 20;
  const auto p = test::random_probs(T, E, 7);
  const auto options = TopKRoutingOptions(2)
                           .capacity_mode(CapacityMode::kFactor)
                           .capacity_factor(1.05)
                           .batch_priority(true)
                           .group_size(S);
  const auto plan = top_k_route(test::to_tensor(p), options);
  CHECK(plan.capacity == naive::capacity(S, 2, 1.05, E, 4));
  test::require_matches(plan, naive::top_k(p, 2, plan.capacity, S, true, false));
}

TEST_CASE("top-k router drops slots of experts the bank no longer holds") {
  const naive::Matrix p = {{.6, .3, .1}, {.1, .6, .3}, {.3, .1, .6}};
  // The bank holds experts 0 and 2 (bank indices 0 and 1).
  const auto map = torch::tensor({0, -1, 1}, torch::kLong);
  const auto plan = top_k_route(test::to_tensor(p), TopKRoutingOptions(2), map, 2);
  CHECK(plan.counts() == std::vector<int64_t>{2, 2});
  CHECK(plan.slot_row[1][0].item<int64_t>() == -1);  // token 1's first choice was expert 1
  CHECK(plan.slot_row[0][1].item<int64_t>() == -1);  // token 0's second choice was expert 1
  CHECK(plan.expert_index[1][0].item<int64_t>() == 1);
}

TEST_CASE("TopKRouter module refuses bad input with a clear message") {
  using moeprune::TopKRouter;
  using moeprune::TopKRouterOptions;
  SECTION("k > E") {
    REQUIRE_THROWS_AS(TopKRouter(TopKRouterOptions(4, 2, 3)), c10::Error);
    REQUIRE_THROWS_WITH(TopKRouter(TopKRouterOptions(4, 2, 3)),
                        Catch::Contains("k should be in [1, E = 2], got k = 3"));
  }
  SECTION("capacity factor <= 0") {
    REQUIRE_THROWS_WITH(
        TopKRouter(TopKRouterOptions(4, 2, 1).routing(
            TopKRoutingOptions(1).capacity_mode(CapacityMode::kFactor).capacity_factor(0))),
        Catch::Contains("capacity_factor should be > 0"));
  }
  TopKRouter router(TopKRouterOptions(4, 2, 1));
  SECTION("wrong rank") {
    REQUIRE_THROWS_WITH(router(torch::randn({4})), Catch::Contains("should be a 2-D"));
  }
  SECTION("wrong width") {
    REQUIRE_THROWS_WITH(router(torch::randn({3, 5})),
                        Catch::Contains("width 5 but the router expects d_model = 4"));
  }
  SECTION("NaN or inf in the logits") {
    auto x = torch::randn({3, 4});
    x[1][2] = std::numeric_limits<float>::quiet_NaN();
    REQUIRE_THROWS_WITH(router(x), Catch::Contains("the input tokens hold NaN or inf (token 1, "
                                                   "feature 2: nan)"));
    x[1][2] = std::numeric_limits<float>::infinity();
    REQUIRE_THROWS_WITH(router(x), Catch::Contains("the input tokens hold NaN or inf (token 1, "
                                                   "feature 2: inf)"));
  }
}

TEST_CASE("TopKRouter adds noise of std 1/E only while training") {
  using moeprune::TopKRouter;
  using moeprune::TopKRouterOptions;
  torch::manual_seed(3);
  TopKRouter router(TopKRouterOptions(6, 4, 2).noise_std(1.0));
  const auto x = torch::randn({4096, 6});
  router->eval();
  const auto clean = router(x).plan;
  CHECK(torch::allclose(clean.router_probs, clean.router_logits.softmax(-1)));
  router->train();
  const auto noisy = router(x).plan;
  // Recover the noise from the probabilities: log p differs from the logits by the noise plus
  // a per-token constant.
  const auto diff = noisy.router_probs.log() - noisy.router_logits;
  const auto noise = diff - diff.mean(-1, true);
  // The centred noise of E i.i.d. N(0, s^2) values has variance s^2 (E - 1) / E.
  const double s = std::sqrt(noise.pow(2).mean().item<double>() * 4.0 / 3.0);
  CHECK(s == Approx(0.25).epsilon(0.05));
}

TEST_CASE("Batch Priority Routing breaks ties of the top-1 gate towards the earlier token") {
  // Hand-computed: four tokens with the same gates; top-1 is expert 0 for all (expert ties go to
  // the lower id); capacity 1: BPR serves them in position order, so token 0 keeps its slot.
  const naive::Matrix same = {{.5, .5}, {.5, .5}, {.5, .5}, {.5, .5}};
  const auto plan = top_k_route(test::to_tensor(same), fixed(1, 1).batch_priority(true));
  CHECK(kept_tokens_of(plan, 0) == std::vector<int64_t>{0});
  CHECK(kept_tokens_of(plan, 1).empty());
  // Gates on a coarse grid (multiples of 1/8), so many tokens share their top-1 gate, and tokens
  // tie with later ones of a higher gate: against the loop reference, k = 1 and 2, with groups.
  torch::manual_seed(5);
  const auto grid = torch::randint(1, 5, {16, 4}).to(torch::kFloat);
  const auto p = test::to_matrix(grid / grid.sum(1, true));
  for (const int64_t k : {1, 2}) {
    for (const int64_t group : {0, 8}) {
      INFO("k=" << k << " S=" << group);
      test::require_matches(
          top_k_route(test::to_tensor(p), fixed(k, 2).batch_priority(true).group_size(group)),
          naive::top_k(p, k, 2, group, /*bpr=*/true, false));
    }
  }
}

TEST_CASE("pruned and merged banks keep each router expert's capacity positions") {
  // The routing over all router experts decides every slot's capacity position (Chowdhury et
  // al. prune after fine-tuning without re-routing): a bank map only drops the slots of removed
  // experts and sends merged ones to their group's bank expert. So the kept slots are the
  // reference's kept slots whose expert the bank still serves, and no held expert gains a slot.
  const int64_t T = 24, E = 6, S = 12;
  const auto p = test::random_probs(T, E, 77);
  for (const bool bpr : {false, true}) {
    const auto options = TopKRoutingOptions(2)
                             .capacity_mode(CapacityMode::kFactor)
                             .capacity_factor(1.0)
                             .capacity_multiple(1)
                             .batch_priority(bpr)
                             .group_size(S);
    const int64_t C = naive::capacity(S, 2, 1.0, E, 1);  // ceil(12 * 2 / 6) = 4
    const auto ref = naive::top_k(p, 2, C, S, bpr, false);
    // Pruned: experts 1 and 4 removed. Merged: {0, 2} -> bank 0, {1, 4} -> 1, {3} -> 2; 5 removed.
    const std::vector<std::pair<std::vector<int64_t>, int64_t>> maps = {{{0, -1, 1, 2, -1, 3}, 4},
                                                                        {{0, 1, 0, 2, 1, -1}, 3}};
    for (const auto& [map, bank] : maps) {
      INFO("bpr=" << bpr << " bank of " << bank);
      const auto plan =
          top_k_route(test::to_tensor(p), options, torch::tensor(map, torch::kLong), bank);
      REQUIRE(plan.capacity == C);
      std::vector<std::vector<int64_t>> want_rows(static_cast<size_t>(bank));
      int64_t dropped_by_capacity = 0;
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t j = 0; j < 2; ++j) {
          const auto& s = ref.slots[t][j];
          const int64_t b = map[static_cast<size_t>(s.expert)];
          INFO("token " << t << " slot " << j << " expert " << s.expert);
          CHECK(plan.expert_index[t][j].item<int64_t>() == s.expert);
          CHECK(plan.combine_weight[t][j].item<double>() == Approx(s.weight).epsilon(1e-6));
          const bool kept = plan.slot_row[t][j].item<int64_t>() >= 0;
          CHECK(kept == (s.kept && b >= 0));
          if (s.kept && b >= 0) {
            want_rows[static_cast<size_t>(b)].push_back(t * 2 + j);
          }
          dropped_by_capacity += s.kept ? 0 : 1;
        }
      }
      CHECK(dropped_by_capacity > 0);  // the capacity binds
      // Each bank expert's rows are exactly its router experts' kept slots.
      for (int64_t b = 0; b < bank; ++b) {
        INFO("bank expert " << b);
        const int64_t begin = plan.expert_offsets[b].item<int64_t>();
        const int64_t end = plan.expert_offsets[b + 1].item<int64_t>();
        std::vector<int64_t> got;
        for (int64_t r = begin; r < end; ++r) {
          got.push_back(plan.row_slot[r].item<int64_t>());
          CHECK(plan.slot_row.reshape({-1})[got.back()].item<int64_t>() == r);
        }
        std::sort(got.begin(), got.end());
        auto want = want_rows[static_cast<size_t>(b)];
        std::sort(want.begin(), want.end());
        CHECK(got == want);
      }
    }
  }
}
