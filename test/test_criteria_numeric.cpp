// The data criteria against a naive reference on a non-degenerate case (issue 20): a Mixtral
// layer (softmax, top-2 renormalised, dropless, SwiGLU experts) whose router gives every token
// distinct gates; importance, frequency and REAP computed here in float64 straight from their
// definitions (expert outputs from the bank's weights, not through dispatch/combine).
#include <moeprune/layers/moe_view.h>
#include <moeprune/pruning/builtin_criteria.h>
#include <moeprune/pruning/criterion.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <vector>

namespace pr = moeprune::pruning;

TEST_CASE("importance and frequency and REAP equal a naive float64 reference with distinct gates") {
  torch::manual_seed(3);
  const int64_t d = 6, F = 5, E = 4, T = 9;
  moeprune::MoELayer layer(moeprune::MoELayerOptions::preset("top_k_gated", d, F, E));
  {
    torch::NoGradGuard no_grad;
    layer->router().router_weight().mul_(3.0);  // decisive, distinct gates
  }
  layer->eval();
  const auto tokens = torch::randn({T, d});
  auto view =
      moeprune::LayerMapView::of({{0, layer}}, [tokens](const auto& visit) { visit(0, tokens); });

  // The reference, in float64.
  const auto x = tokens.to(torch::kDouble);
  const auto W = layer->router().router_weight().detach().to(torch::kDouble);  // [E, d]
  const auto& bank = layer->experts();
  const auto w1 = bank->w1.detach().to(torch::kDouble);  // [E, d, F] gate
  const auto w3 = bank->w3.detach().to(torch::kDouble);  // [E, d, F] up
  const auto w2 = bank->w2.detach().to(torch::kDouble);  // [E, F, d]
  const auto probs = torch::softmax(x.matmul(W.t()), -1);
  std::vector<double> importance(E, 0.0), frequency(E, 0.0), reap_sum(E, 0.0), reap_n(E, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    const auto p = probs[t];
    // Top 2 by probability (the reference sorts; distinct gates make it unambiguous).
    const auto order = std::get<1>(p.sort(/*dim=*/0, /*descending=*/true));
    const int64_t a = order[0].item<int64_t>(), b = order[1].item<int64_t>();
    const double pa = p[a].item<double>(), pb = p[b].item<double>();
    INFO("token " << t << ": top-2 margin " << pb - p[order[2].item<int64_t>()].item<double>());
    REQUIRE(pb - p[order[2].item<int64_t>()].item<double>() > 1e-6);
    for (int64_t e = 0; e < E; ++e) {
      importance[e] += p[e].item<double>();
    }
    for (const auto& [e, gate] : {std::pair{a, pa / (pa + pb)}, std::pair{b, pb / (pa + pb)}}) {
      frequency[e] += 1.0;
      const auto xe = x[t];
      const auto out = (torch::silu(xe.matmul(w1[e])) * xe.matmul(w3[e])).matmul(w2[e]);
      reap_sum[e] += gate * out.norm().item<double>();
      reap_n[e] += 1.0;
    }
  }
  std::vector<double> reap(E, 0.0);
  for (int64_t e = 0; e < E; ++e) {
    reap[e] = reap_n[e] > 0 ? reap_sum[e] / reap_n[e] : 0.0;
  }
  const auto as_tensor = [](const std::vector<double>& v) {
    return torch::tensor(v, torch::kDouble);
  };
  // Scores in float64 from float32 layer computations: relative 1e-5 covers the fp32 rounding of
  // the router logits and the expert outputs.
  const auto close = [](const torch::Tensor& got, const torch::Tensor& want) {
    INFO("moeprune " << got << "\nreference " << want);
    CHECK(torch::allclose(got.to(torch::kDouble), want, 1e-5, 1e-6));
  };
  close(pr::score_experts(pr::Importance(), *view).at(0), as_tensor(importance));
  const auto freq = pr::score_experts(pr::Frequency(), *view).at(0);
  CHECK(torch::equal(freq, as_tensor(frequency)));
  close(pr::score_experts(pr::Reap(), *view).at(0), as_tensor(reap));
  // Non-degenerate: at least three of the four experts are used.
  CHECK((as_tensor(frequency) > 0).sum().item<int64_t>() >= 3);
}
