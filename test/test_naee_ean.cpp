// EAN and NAEE against independent references: EAN from routing and SwiGLU experts computed by
// hand; NAEE's chosen subset against a brute force over the layer itself, each candidate subset
// pruned with its router rows dropped (Expert Drop: the dropped experts' logits gone, the top-k
// renormalised over the survivors, which for Mixtral's renormalised routing is exactly NAEE's
// "-inf logits") and the output compared with the unpruned layer's.
#include <moeprune/layers/moe_view.h>
#include <moeprune/pruning/builtin_criteria.h>
#include <moeprune/pruning/pruning_plan.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <limits>
#include <map>
#include <vector>

namespace pr = moeprune::pruning;
using moeprune::LayerMapView;
using moeprune::MoELayer;
using moeprune::MoELayerOptions;

namespace {

struct Case {
  MoELayer layer{nullptr};
  torch::Tensor tokens;
};

// A Mixtral-preset layer whose router weights spread the tokens over all experts.
Case make_case(int64_t E, uint64_t seed) {
  torch::manual_seed(static_cast<int64_t>(seed));
  Case c;
  c.layer = MoELayer(MoELayerOptions::preset("top_k_gated", 6, 5, E));
  c.layer->eval();
  c.tokens = torch::randn({40, 6});
  return c;
}

std::shared_ptr<LayerMapView> view_of(const Case& c) {
  const auto tokens = c.tokens;
  return LayerMapView::of({{0, c.layer}}, [tokens](const auto& visit) {
    visit(0, tokens.narrow(0, 0, 25));
    visit(0, tokens.narrow(0, 25, 15));
  });
}

torch::Tensor forward(MoELayer layer, const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  return layer->forward(x).output.to(torch::kDouble);
}

}  // namespace

TEST_CASE("ean is the mean norm of the routed experts' outputs, computed by hand") {
  const auto c = make_case(4, 1);
  const auto scores = pr::score_experts(pr::ExpertActivationNorm(), *view_of(c)).at(0);
  // By hand: softmax top-2 (ties to the lower id), SwiGLU experts w2(silu(x w1) * (x w3)).
  const auto x = c.tokens.to(torch::kDouble);
  const auto bank = c.layer->experts();
  const auto probs = torch::softmax(
      x.matmul(c.layer->router().router_weight().detach().to(torch::kDouble).t()), 1);
  std::vector<double> sum(4, 0.0), count(4, 0.0);
  for (int64_t t = 0; t < x.size(0); ++t) {
    const auto top =
        std::get<1>(probs[t].sort(/*stable=*/std::optional<bool>(true), 0, /*descending=*/true));
    for (int64_t s = 0; s < 2; ++s) {
      const int64_t j = top[s].item<int64_t>();
      const auto w1 = bank->w1[j].detach().to(torch::kDouble);
      const auto w2 = bank->w2[j].detach().to(torch::kDouble);
      const auto w3 = bank->w3[j].detach().to(torch::kDouble);
      const auto h = torch::silu(x[t].matmul(w1)) * x[t].matmul(w3);
      sum[j] += h.matmul(w2).norm().item<double>();
      count[j] += 1.0;
    }
  }
  for (int64_t j = 0; j < 4; ++j) {
    INFO("expert " << j << " routed " << count[j] << " times");
    REQUIRE(count[j] > 0);  // the case exercises every expert
    // The layer runs in fp32; the reference in fp64.
    CHECK(scores[j].item<double>() == Approx(sum[j] / count[j]).epsilon(1e-5));
  }
}

TEST_CASE("naee drops the subset whose removal changes the layer output least (brute force)") {
  const int64_t E = 6;
  const auto c = make_case(E, 2);
  const auto full = forward(c.layer, c.tokens);
  // The error of dropping `dropped`, measured on a copy of the layer pruned by Expert Drop.
  const auto error_without = [&](const std::vector<int64_t>& dropped) {
    auto copy = std::dynamic_pointer_cast<moeprune::MoELayerImpl>(c.layer->clone());
    auto scores = torch::ones({E}, torch::kDouble);
    for (const int64_t j : dropped) scores[j] = 0.0;
    const auto copy_view = LayerMapView::of({{0, MoELayer(copy)}});
    const auto plan = pr::PruningPlan::per_layer({{0, scores}}, *copy_view,
                                                 {{0, static_cast<int64_t>(dropped.size())}});
    pr::apply_plan(*copy_view, plan, /*drop_router_columns=*/true);
    return (forward(MoELayer(copy), c.tokens) - full).pow(2).sum().item<double>();
  };
  for (const int64_t n : {1, 2, 3}) {
    INFO("pruning " << n << " of " << E);
    // Brute force over every subset of n experts.
    std::vector<int64_t> best;
    double best_error = std::numeric_limits<double>::infinity();
    std::vector<bool> pick(static_cast<size_t>(E), false);
    std::fill(pick.end() - n, pick.end(), true);
    do {
      std::vector<int64_t> dropped;
      for (int64_t j = 0; j < E; ++j) {
        if (pick[static_cast<size_t>(j)]) dropped.push_back(j);
      }
      const double e = error_without(dropped);
      if (e < best_error) {
        best_error = e;
        best = dropped;
      }
    } while (std::next_permutation(pick.begin(), pick.end()));
    const auto scores = pr::score_experts(pr::Naee(n), *view_of(c)).at(0);
    const auto plan = pr::PruningPlan::same_count({{0, scores}}, *view_of(c), n);
    CHECK(plan.layers[0].pruned == best);
    // Greedy (no count given) agrees on the first expert it removes with the best single drop.
    if (n == 1) {
      const auto greedy = pr::score_experts(pr::Naee(), *view_of(c)).at(0);
      CHECK(greedy.argmin().item<int64_t>() == best[0]);
    }
  }
}

TEST_CASE("naee refuses what its reconstruction does not cover") {
  auto c = make_case(4, 3);
  REQUIRE_THROWS_WITH(pr::score_experts(pr::Naee(3), *view_of(c)),
                      Catch::Contains("cannot prune 3") && Catch::Contains("keeps at least 2"));
  MoELayer switch_layer(MoELayerOptions::preset("switch", 6, 5, 4));
  const auto tokens = c.tokens;
  const auto view =
      LayerMapView::of({{0, switch_layer}}, [tokens](const auto& visit) { visit(0, tokens); });
  REQUIRE_THROWS_WITH(pr::score_experts(pr::Naee(1), *view),
                      Catch::Contains("drops tokens at a capacity"));
  MoELayer expert_choice(MoELayerOptions::preset("expert_choice", 6, 5, 4));
  const auto ec_view =
      LayerMapView::of({{0, expert_choice}}, [tokens](const auto& visit) { visit(0, tokens); });
  REQUIRE_THROWS_WITH(pr::score_experts(pr::Naee(1), *ec_view),
                      Catch::Contains("does not route token-choice top-k") &&
                          Catch::Contains("its router is expert choice"));
}
