// The group-limited router (DeepSeek-V2/V3, GLM-4.5) against a naive per-token reference written
// from transformers' DeepseekV3TopkRouter / DeepseekV2MoEGate in plain loops (fp64), and its
// pruning: with n experts pruned per group and the router rows dropped, the routed experts
// equal the reference computed with the pruned experts' scores set to -inf before grouping.
#include <moeprune/layers/moe_view.h>
#include <moeprune/pruning/pruning_plan.h>
#include <moeprune/routing/group_limited_router.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <set>
#include <vector>

namespace pr = moeprune::pruning;
using moeprune::GroupLimitedRoutingOptions;
using moeprune::GroupScore;
using moeprune::LayerMapView;
using moeprune::MoELayer;
using moeprune::MoELayerOptions;
using moeprune::ScoreFunction;

namespace {

struct Routed {
  std::vector<int64_t> experts;  // sorted
  std::map<int64_t, double> weight;
};

// Indices of the n largest values, ties to the lower index.
std::vector<int64_t> top_n(const std::vector<double>& v, int64_t n) {
  std::vector<int64_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return v[a] > v[b]; });
  idx.resize(static_cast<size_t>(n));
  return idx;
}

// One token's routing, written from modeling_deepseek_v3.py: scores s, choice c = s + b with
// `removed` experts at -inf, groups by max / sum of top two of c, the others' c masked to 0.0,
// top k of c, weights s (normalised + 1e-20, scaled).
Routed reference(const std::vector<double>& logits, const std::vector<double>& bias,
                 const GroupLimitedRoutingOptions& g, int64_t k, bool normalise,
                 const std::set<int64_t>& removed = {}) {
  const auto E = static_cast<int64_t>(logits.size());
  std::vector<double> s(logits.size());
  if (g.score_function() == ScoreFunction::kSigmoid) {
    for (int64_t e = 0; e < E; ++e) s[e] = 1.0 / (1.0 + std::exp(-logits[e]));
  } else {
    // softmax over the experts that exist
    double z = 0.0;
    for (int64_t e = 0; e < E; ++e) z += removed.count(e) ? 0.0 : std::exp(logits[e]);
    for (int64_t e = 0; e < E; ++e) s[e] = removed.count(e) ? 0.0 : std::exp(logits[e]) / z;
  }
  std::vector<double> c(s.size());
  for (int64_t e = 0; e < E; ++e) {
    c[e] = removed.count(e) ? -std::numeric_limits<double>::infinity()
                            : s[e] + (bias.empty() ? 0.0 : bias[e]);
  }
  const int64_t G = g.num_groups(), per = E / G;
  if (G > 1) {
    std::vector<double> gs(static_cast<size_t>(G));
    for (int64_t grp = 0; grp < G; ++grp) {
      std::vector<double> members(c.begin() + grp * per, c.begin() + (grp + 1) * per);
      std::sort(members.rbegin(), members.rend());
      gs[grp] = g.group_score() == GroupScore::kMax ? members[0] : members[0] + members[1];
    }
    const auto keep = top_n(gs, g.groups_kept());
    for (int64_t e = 0; e < E; ++e) {
      if (std::find(keep.begin(), keep.end(), e / per) == keep.end() && !removed.count(e)) {
        c[e] = 0.0;
      }
    }
  }
  Routed r;
  r.experts = top_n(c, k);
  double sum = 0.0;
  for (const auto e : r.experts) sum += s[e];
  for (const auto e : r.experts) {
    r.weight[e] = (normalise ? s[e] / (sum + 1e-20) : s[e]) * g.scaling();
  }
  std::sort(r.experts.begin(), r.experts.end());
  return r;
}

// The layer's routing of token t, in original expert ids.
Routed routed_by(const moeprune::RoutingPlan& plan, int64_t t, const std::vector<int64_t>& ids) {
  Routed r;
  for (int64_t j = 0; j < plan.expert_index.size(1); ++j) {
    const auto e = ids[plan.expert_index[t][j].item<int64_t>()];
    r.experts.push_back(e);
    r.weight[e] = plan.combine_weight[t][j].item<double>();
  }
  std::sort(r.experts.begin(), r.experts.end());
  return r;
}

std::vector<double> row(const torch::Tensor& t) {
  const auto c = t.to(torch::kDouble).contiguous();
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

MoELayer deepseek_layer(const std::string& preset, int64_t E, int64_t k,
                        const GroupLimitedRoutingOptions& g, uint64_t seed) {
  torch::manual_seed(static_cast<int64_t>(seed));
  auto o = MoELayerOptions::preset(preset, 8, 6, E);
  o.routing().k(k);
  o.router_as<moeprune::GroupLimitedRouterConfig>().groups(g);
  MoELayer layer(o);
  layer->eval();
  auto& router = dynamic_cast<moeprune::GroupLimitedRouterImpl&>(layer->router());
  torch::NoGradGuard no_grad;
  router.weight.normal_(0.0, 0.6);
  if (router.e_score_correction_bias.defined()) {
    // Non-zero, partly negative: a masked expert's 0.0 can outrank a kept one, as in
    // transformers.
    router.e_score_correction_bias.uniform_(-0.4, 0.3);
  }
  return layer;
}

void check_against_reference(MoELayer layer, const torch::Tensor& tokens,
                             const std::vector<double>& bias, const std::set<int64_t>& removed,
                             const std::vector<int64_t>& ids, const GroupLimitedRoutingOptions& g,
                             const torch::Tensor& full_weight, bool normalise) {
  const int64_t k = layer->options.routing().k();
  const auto routed = layer->route(tokens);
  const auto logits = tokens.to(torch::kDouble).matmul(full_weight.to(torch::kDouble).t());
  for (int64_t t = 0; t < tokens.size(0); ++t) {
    const auto want = reference(row(logits[t]), bias, g, k, normalise, removed);
    const auto got = routed_by(routed.plan, t, ids);
    INFO("token " << t);
    REQUIRE(got.experts == want.experts);
    for (const auto e : want.experts) {
      INFO("expert " << e);
      // fp32 scores against fp64: a few ulps of a value below routed_scaling_factor.
      CHECK(got.weight.at(e) == Approx(want.weight.at(e)).epsilon(1e-5));
    }
  }
}

std::vector<int64_t> iota_ids(int64_t E) {
  std::vector<int64_t> ids(static_cast<size_t>(E));
  std::iota(ids.begin(), ids.end(), 0);
  return ids;
}

}  // namespace

TEST_CASE("group-limited routing equals the reference: V3 sigmoid with bias and V2 softmax") {
  const auto tokens = (torch::manual_seed(3), torch::randn({64, 8}));
  SECTION("deepseek_v3: 4 groups, 2 kept, top-2-sum, bias, normalised, scaled") {
    const auto g = GroupLimitedRoutingOptions()
                       .score_function(ScoreFunction::kSigmoid)
                       .num_groups(4)
                       .groups_kept(2)
                       .group_score(GroupScore::kTopTwoSum)
                       .correction_bias(true)
                       .scaling(2.5);
    auto layer = deepseek_layer("group_limited_sigmoid", 16, 3, g, 5);
    auto& router = dynamic_cast<moeprune::GroupLimitedRouterImpl&>(layer->router());
    check_against_reference(layer, tokens, row(router.e_score_correction_bias), {}, iota_ids(16), g,
                            router.weight.detach(), /*normalise=*/true);
  }
  SECTION("deepseek_v2: 4 groups, 1 kept, max, no bias, not normalised") {
    const auto g = GroupLimitedRoutingOptions()
                       .score_function(ScoreFunction::kSoftmax)
                       .num_groups(4)
                       .groups_kept(1)
                       .group_score(GroupScore::kMax)
                       .correction_bias(false)
                       .scaling(16.0);
    auto layer = deepseek_layer("group_limited_softmax", 12, 2, g, 6);
    auto& router = dynamic_cast<moeprune::GroupLimitedRouterImpl&>(layer->router());
    REQUIRE_FALSE(router.e_score_correction_bias.defined());
    check_against_reference(layer, tokens, {}, {}, iota_ids(12), g, router.weight.detach(),
                            /*normalise=*/false);
  }
  SECTION("a bias below every score: the masked groups' 0.0 outranks the kept ones") {
    // transformers masks the groups it drops with 0.0, not -inf: when every choice score is
    // negative, the k experts come from the dropped groups (lowest ids first, all tied at 0).
    const auto g = GroupLimitedRoutingOptions().num_groups(4).groups_kept(2).scaling(1.0);
    auto layer = deepseek_layer("group_limited_sigmoid", 16, 3, g, 8);
    auto& router = dynamic_cast<moeprune::GroupLimitedRouterImpl&>(layer->router());
    {
      torch::NoGradGuard no_grad;
      router.e_score_correction_bias.uniform_(-2.0, -1.5);
    }
    check_against_reference(layer, tokens, row(router.e_score_correction_bias), {}, iota_ids(16), g,
                            router.weight.detach(), /*normalise=*/true);
  }
  SECTION("one group is plain top-k of the biased scores") {
    const auto g = GroupLimitedRoutingOptions().num_groups(1).groups_kept(1);
    auto layer = deepseek_layer("group_limited_sigmoid", 6, 2, g, 7);
    auto& router = dynamic_cast<moeprune::GroupLimitedRouterImpl&>(layer->router());
    check_against_reference(layer, tokens, row(router.e_score_correction_bias), {}, iota_ids(6), g,
                            router.weight.detach(), /*normalise=*/true);
  }
}

TEST_CASE("the layer output is the weighted sum of the chosen SwiGLU experts and trains") {
  const auto g = GroupLimitedRoutingOptions().num_groups(2).groups_kept(1).scaling(1.5);
  auto layer = deepseek_layer("group_limited_sigmoid", 8, 2, g, 9);
  const auto x = (torch::manual_seed(10), torch::randn({20, 8}));
  const auto out = layer->forward(x);
  const auto& router = dynamic_cast<moeprune::GroupLimitedRouterImpl&>(layer->router());
  const auto logits = x.to(torch::kDouble).matmul(router.weight.detach().to(torch::kDouble).t());
  const auto bank = layer->experts();
  for (int64_t t = 0; t < 20; ++t) {
    const auto want = reference(row(logits[t]), row(router.e_score_correction_bias), g, 2, true);
    auto y = torch::zeros({8}, torch::kDouble);
    const auto xt = x[t].to(torch::kDouble);
    for (const auto e : want.experts) {
      const auto h = torch::silu(xt.matmul(bank->w1[e].detach().to(torch::kDouble))) *
                     xt.matmul(bank->w3[e].detach().to(torch::kDouble));
      y += want.weight.at(e) * h.matmul(bank->w2[e].detach().to(torch::kDouble));
    }
    INFO("token " << t);
    CHECK(torch::allclose(out.output[t].detach().to(torch::kDouble), y, 1e-5, 1e-5));
  }
  // The weights are the scores: the router gets a gradient (the selection does not need one).
  layer->train();
  layer->forward(x).output.pow(2).sum().backward();
  REQUIRE(layer->router().router_weight().grad().defined());
  CHECK(layer->router().router_weight().grad().abs().sum().item<double>() > 0.0);
}

TEST_CASE("pruning n per group with the rows dropped routes as -inf scores before grouping") {
  const auto g = GroupLimitedRoutingOptions()
                     .num_groups(4)
                     .groups_kept(2)
                     .group_score(GroupScore::kTopTwoSum)
                     .scaling(2.5);
  const int64_t E = 16;
  auto layer = deepseek_layer("group_limited_sigmoid", E, 3, g, 11);
  auto& router = dynamic_cast<moeprune::GroupLimitedRouterImpl&>(layer->router());
  const auto full_weight = router.weight.detach().clone();
  const auto bias = row(router.e_score_correction_bias);
  const auto tokens = (torch::manual_seed(12), torch::randn({80, 8}));

  // Scores that would prune unequally if groups were ignored: group 0 holds the 6 lowest.
  auto scores = torch::arange(E, torch::kDouble) + 100.0;
  for (int64_t e = 0; e < 4; ++e) scores[e] = static_cast<double>(e);
  scores[9] = 10.0;
  scores[14] = 11.0;
  const auto view = LayerMapView::of({{0, layer}});
  const auto plan = pr::PruningPlan::same_count({{0, scores}}, *view, 8);
  // Two per group, the lowest of each: {0, 1}, {4, 5}, {8, 9}, {12, 14}.
  CHECK(plan.layers[0].pruned == std::vector<int64_t>{0, 1, 4, 5, 8, 9, 12, 14});
  pr::apply_plan(*view, plan, /*drop_router_columns=*/true);

  REQUIRE(router.num_experts() == 8);
  const std::set<int64_t> removed(plan.layers[0].pruned.begin(), plan.layers[0].pruned.end());
  std::vector<int64_t> ids;
  for (int64_t e = 0; e < E; ++e) {
    if (!removed.count(e)) ids.push_back(e);
  }
  // The bias went with the rows.
  for (size_t i = 0; i < ids.size(); ++i) {
    CHECK(router.e_score_correction_bias[static_cast<int64_t>(i)].item<double>() ==
          bias[static_cast<size_t>(ids[i])]);
  }
  check_against_reference(layer, tokens, bias, removed, ids, g, full_weight, /*normalise=*/true);
}

TEST_CASE("plans that would break a group-limited router's groups are refused") {
  const auto g = GroupLimitedRoutingOptions().num_groups(4).groups_kept(2);
  auto layer = deepseek_layer("group_limited_sigmoid", 16, 3, g, 13);
  const auto view = LayerMapView::of({{0, layer}});
  const auto scores = torch::arange(16, torch::kDouble);
  // Not a multiple of the group count.
  CHECK_THROWS_WITH(pr::PruningPlan::same_count({{0, scores}}, *view, 6),
                    Catch::Contains("4 equal expert groups") && Catch::Contains("multiple of 4"));
  // Leaving one expert per group: groups are scored by their top two. The refusal says why 8.
  CHECK_THROWS_WITH(pr::PruningPlan::same_count({{0, scores}}, *view, 12),
                    Catch::Contains("fewer than the 8 its router needs (k = 3 within topk_group = "
                                    "2 of its 4 groups needs 2 per group (a group is scored by "
                                    "its two best experts), and its groups stay equal: 2 x 4)"));
  // A hand-written plan pruning two from group 0 and none elsewhere.
  auto plan = pr::PruningPlan::same_count({{0, scores}}, *view, 4);
  plan.layers[0].pruned = {0, 1, 4, 5};
  CHECK_THROWS_WITH(pr::apply_plan(*view, plan),
                    Catch::Contains("expert group 2") && Catch::Contains("equal groups"));
  // The layer itself refuses unequal groups too.
  CHECK_THROWS_WITH(layer->keep_experts({2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}, true),
                    Catch::Contains("equal groups"));
  CHECK(layer->router().num_experts() == 16);
}

TEST_CASE("a global budget over group-limited layers prunes whole rounds") {
  const auto g = GroupLimitedRoutingOptions().num_groups(2).groups_kept(1);
  auto a = deepseek_layer("group_limited_sigmoid", 8, 2, g, 14);
  MoELayer b(MoELayerOptions::preset("top_k_gated", 8, 6, 6));
  const auto view = LayerMapView::of({{0, a}, {1, b}});
  // Layer 0's groups {0..3} and {4..7}; its rounds: {0, 4} (mean 0.5), {1, 6} (mean 31.5).
  auto sa = torch::tensor({0.0, 1.0, 60.0, 61.0, 1.0, 100.0, 62.0, 63.0}, torch::kDouble);
  auto sb = torch::tensor({5.0, 6.0, 2.0, 70.0, 71.0, 72.0}, torch::kDouble);
  const pr::ExpertScores scores{{0, sa}, {1, sb}};
  auto plan = pr::PruningPlan::global_budget(scores, *view, 4);
  // In score order: layer 0's round {0, 4} (mean 0.5), layer 1's expert 2 (2.0), its expert 0
  // (5.0): four experts.
  REQUIRE(plan.layers.size() == 2);
  CHECK(plan.layers[0].pruned == std::vector<int64_t>{0, 4});
  CHECK(plan.layers[1].pruned == std::vector<int64_t>{0, 2});
  // An odd budget with only group-limited layers cannot be met.
  const auto only_a = LayerMapView::of({{0, a}});
  CHECK_THROWS_WITH(pr::PruningPlan::global_budget({{0, sa}}, *only_a, 3),
                    Catch::Contains("cannot be met exactly"));
}
