#include "test_helpers.h"

#include <moeprune/routing/expert_choice_router.h>
#include <moeprune/routing/functional/routing.h>

using moeprune::functional::expert_choice_route;

TEST_CASE("expert-choice router: each expert takes its top-C tokens") {
  const naive::Matrix p = {{.9, .1}, {.6, .4}, {.3, .7}, {.2, .8}};
  // cf 1, no rounding: C = ceil(4 / 2) = 2.
  const auto plan = expert_choice_route(test::to_tensor(p), 1.0, 1);
  CHECK(plan.capacity == 2);
  CHECK(plan.slots_per_token() == 2);
  CHECK(plan.counts() == std::vector<int64_t>{2, 2});
  // Rows of expert 1 in its preference order: token 3 (.8) then token 2 (.7).
  CHECK(plan.row_slot.eq(torch::tensor({0 * 2 + 0, 1 * 2 + 0, 3 * 2 + 1, 2 * 2 + 1}, torch::kLong))
            .all()
            .item<bool>());
  CHECK(plan.combine_weight[3][1].item<float>() == Approx(.8));
}

TEST_CASE("expert-choice router lets a token reach zero or several experts") {
  const naive::Matrix p = {{.5, .5}, {.9, .1}, {.1, .9}, {.8, .2}};
  // C = 1 per expert with cf 0.5: expert 0 takes token 1, expert 1 takes token 2; tokens 0 and 3
  // reach no expert.
  const auto plan = expert_choice_route(test::to_tensor(p), 0.5, 1);
  CHECK(plan.kept().sum(1).eq(torch::tensor({0, 1, 1, 0}, torch::kLong)).all().item<bool>());
  // cf 2: C = 4 = all tokens, every token reaches both experts.
  CHECK(expert_choice_route(test::to_tensor(p), 2.0, 1).num_rows() == 8);
}

TEST_CASE("expert-choice router matches the loop reference, with groups and ties") {
  const auto E = GENERATE(1, 3, 8);
  for (const int64_t group : {0, 6}) {
    for (const double cf : {0.5, 1.0, 2.0}) {
      const int64_t T = 12;
      auto p = test::random_probs(T, E, 31 * E + group);
      p[4] = p[5];  // a tie between tokens 4 and 5: the earlier token wins
      const auto plan = expert_choice_route(test::to_tensor(p), cf, 4, group);
      const int64_t S = group ? group : T;
      INFO("E=" << E << " S=" << group << " cf=" << cf);
      CHECK(plan.capacity == std::min<int64_t>(naive::capacity(S, 1, cf, E, 4), S));
      test::require_matches(plan, naive::expert_choice(p, plan.capacity, group));
    }
  }
}

TEST_CASE("ExpertChoiceRouter module routes softmax probabilities and checks its input") {
  using moeprune::ExpertChoiceRouter;
  using moeprune::ExpertChoiceRouterOptions;
  torch::manual_seed(0);
  ExpertChoiceRouter router(ExpertChoiceRouterOptions(8, 4).capacity_factor(1.0));
  const auto x = torch::randn({16, 8});
  const auto out = router(x);
  const auto probs = x.matmul(router->weight.t()).softmax(-1);
  CHECK(torch::allclose(out.plan.router_probs, probs, 1e-5, 1e-6));
  test::require_matches(out.plan, naive::expert_choice(test::to_matrix(probs), 4, 0));
  REQUIRE_THROWS_WITH(ExpertChoiceRouter(ExpertChoiceRouterOptions(8, 4).capacity_factor(0)),
                      Catch::Contains("capacity_factor should be > 0"));
  REQUIRE_THROWS_WITH(router(torch::randn({16, 7})), Catch::Contains("d_model = 8"));
}
