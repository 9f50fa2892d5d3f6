#include "test_helpers.h"

#include <moeprune/routing/ensemble_router.h>

using moeprune::EnsembleRouter;
using moeprune::EnsembleRouterOptions;
using moeprune::functional::CapacityMode;
using moeprune::functional::TopKRoutingOptions;

TEST_CASE("ensemble router: member m routes only among its own experts") {
  torch::manual_seed(1);
  const int64_t E = 8, M = 2, item = 3, T = 4 * item;  // items 0,2 -> member 0; 1,3 -> member 1
  EnsembleRouter router(
      EnsembleRouterOptions(6, E, M, 2)
          .routing(TopKRoutingOptions(2).capacity_mode(CapacityMode::kFixed).expert_capacity(2)));
  router->eval();
  const auto x = torch::randn({T, 6});
  const auto out = router->route(x, {}, -1, item);
  const auto logits = x.matmul(router->weight.t());

  for (int64_t m = 0; m < M; ++m) {
    // The member's tokens in order, and their softmax over the member's block of experts.
    std::vector<int64_t> ids;
    for (int64_t t = 0; t < T; ++t) {
      if ((t / item) % M == m) {
        ids.push_back(t);
      }
    }
    const auto member_probs =
        logits.index_select(0, torch::tensor(ids)).narrow(1, m * E / M, E / M).softmax(-1);
    const auto ref = naive::top_k(test::to_matrix(member_probs), 2, 2, 0, false, false);
    for (size_t i = 0; i < ids.size(); ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        INFO("member " << m << " token " << ids[i] << " slot " << j);
        CHECK(out.plan.expert_index[ids[i]][j].item<int64_t>() ==
              ref.slots[i][j].expert + m * E / M);
        CHECK((out.plan.slot_row[ids[i]][j].item<int64_t>() >= 0) == ref.slots[i][j].kept);
        CHECK(out.plan.combine_weight[ids[i]][j].item<float>() ==
              Approx(ref.slots[i][j].weight).epsilon(1e-5));
      }
    }
    // The member's expert counts.
    for (int64_t e = 0; e < E / M; ++e) {
      CHECK(out.plan.expert_counts[m * E / M + e].item<int64_t>() ==
            static_cast<int64_t>(ref.rows_of_expert[e].size()));
    }
  }
  // Rows are expert-major and point back at their slots.
  const auto rows_expert = out.plan.expert_index.reshape({-1}).index_select(0, out.plan.row_slot);
  CHECK(rows_expert.diff().ge(0).all().item<bool>());
  CHECK(out.plan.slot_row.reshape({-1})
            .index_select(0, out.plan.row_slot)
            .eq(torch::arange(out.plan.num_rows()))
            .all()
            .item<bool>());
}

TEST_CASE("ensemble router refuses shapes that do not split into members") {
  REQUIRE_THROWS_WITH(EnsembleRouter(EnsembleRouterOptions(4, 6, 4)),
                      Catch::Contains("should be a positive multiple of ensemble_size"));
  REQUIRE_THROWS_WITH(EnsembleRouter(EnsembleRouterOptions(4, 8, 2, 5)),
                      Catch::Contains("k should be in [1, E/M = 4]"));
  EnsembleRouter router(EnsembleRouterOptions(4, 8, 2));
  REQUIRE_THROWS_WITH(router->route(torch::randn({5, 4}), {}, -1, 1),
                      Catch::Contains("do not hold whole items"));
}
