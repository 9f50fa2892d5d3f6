// Sparsity inside experts through the MoE view (compression/expert_sparsity.h), against naive
// fp64 loops over a hand-built routing: each expert's statistics come from exactly the tokens
// routed to it (or all tokens), weighted by the router as MoE-Pruner defines, and layers are
// calibrated one after the other on the already pruned model when sequential.
#include <moeprune/compression/expert_quantization.h>
#include <moeprune/compression/expert_sparsity.h>
#include <moeprune/layers/moe_layer.h>
#include <moeprune/layers/moe_view.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <vector>

#include "compression_helpers.h"

namespace expert_sparsity_test {

namespace cm = moeprune::compression;
using moeprune::MoELayer;
using moeprune::MoELayerOptions;

constexpr int64_t kD = 8, kF = 8, kE = 4, kT = 40;

// A Mixtral-style layer (top-2 of a softmax, renormalised, SwiGLU experts) whose router reads
// feature e for expert e, so a token's two experts are its two large features.
MoELayer routed_layer() {
  torch::manual_seed(3);
  MoELayer layer(MoELayerOptions::preset("top_k_gated", kD, kF, kE));
  torch::NoGradGuard no_grad;
  auto w = layer->router().router_weight();
  w.zero_();
  for (int64_t e = 0; e < kE; ++e) {
    w[e][e] = 4.0;
  }
  return layer;
}

// Tokens and their hand-chosen experts: token t goes to experts (t % 3, (t + 1) % 3) when
// `skip_last` (expert 3 then gets nothing), else (t % 4, (t + 1) % 4).
struct Routed {
  torch::Tensor tokens;                              // [T, d] fp32
  std::vector<std::pair<int64_t, int64_t>> experts;  // per token: first, second choice
};

Routed routed_tokens(bool skip_last) {
  torch::manual_seed(11);
  Routed r;
  r.tokens = torch::rand({kT, kD}) * 0.2 - 0.1;
  for (int64_t t = 0; t < kT; ++t) {
    const int64_t a = skip_last ? t % 3 : t % 4;
    const int64_t b = skip_last ? (t + 1) % 3 : (t + 1) % 4;
    r.tokens[t][a] = 1.5 + 0.01 * static_cast<double>(t % 7);
    r.tokens[t][b] = 1.0 + 0.01 * static_cast<double>(t % 5);
    r.experts.push_back({a, b});
  }
  return r;
}

std::shared_ptr<moeprune::LayerMapView> view_of(const MoELayer& layer, const torch::Tensor& x) {
  return moeprune::LayerMapView::of(
      {{0, layer}}, [x](const std::function<void(int64_t, const torch::Tensor&)>& visit) {
        visit(0, x.narrow(0, 0, kT / 2));
        visit(0, x.narrow(0, kT / 2, kT - kT / 2));
      });
}

// The router weight of expert e for token t as the layer defines it: softmax over all E of
// the logits 4 x_t[e], renormalised over the token's two experts (fp64).
double gate_of(const Routed& r, int64_t t, int64_t e) {
  std::vector<double> p(kE);
  double z = 0;
  for (int64_t j = 0; j < kE; ++j) {
    p[j] = std::exp(4.0 * r.tokens[t][j].item<double>());
    z += p[j];
  }
  const auto [a, b] = r.experts[static_cast<size_t>(t)];
  return p[e] / (p[a] + p[b]);
}

// Naive fp64 statistics of one expert: its tokens (and weights), and the hidden activations
// silu(x W1) * (x W3) of its unpruned weights.
struct Naive {
  torch::Tensor x, h, weight;  // [n, d], [n, F], [n]
};

Naive naive_inputs(const Routed& r, const MoELayer& original, int64_t e, bool all, bool weighted) {
  std::vector<int64_t> ids;
  std::vector<double> w;
  for (int64_t t = 0; t < kT; ++t) {
    const auto [a, b] = r.experts[static_cast<size_t>(t)];
    if (all || a == e || b == e) {
      ids.push_back(t);
      w.push_back(weighted ? gate_of(r, t, e) : 1.0);
    }
  }
  Naive n;
  n.x = r.tokens.index_select(0, torch::tensor(ids)).to(torch::kDouble);
  n.weight = torch::tensor(w, torch::kDouble);
  const auto w1 = original->experts()->w1[e].to(torch::kDouble);
  const auto w3 = original->experts()->w3[e].to(torch::kDouble);
  const auto g = n.x.mm(w1);
  n.h = g / (1 + torch::exp(-g)) * n.x.mm(w3);
  return n;
}

// Wanda's kept weights by a loop: in each row of W [out, in], the int(in * ratio) lowest
// |W_ij| * ||X_j|| go (ties by index).
torch::Tensor naive_wanda_keep(const torch::Tensor& w, const torch::Tensor& x,
                               const torch::Tensor& weight, double ratio) {
  const int64_t out = w.size(0), in = w.size(1);
  std::vector<double> norm(static_cast<size_t>(in));
  for (int64_t j = 0; j < in; ++j) {
    double s = 0;
    for (int64_t t = 0; t < x.size(0); ++t) {
      const double v = x[t][j].item<double>();
      s += weight[t].item<double>() * v * v;
    }
    norm[static_cast<size_t>(j)] = std::sqrt(s);
  }
  auto keep = torch::ones({out, in}, torch::kBool);
  const auto k = static_cast<int64_t>(static_cast<double>(in) * ratio);
  for (int64_t i = 0; i < out; ++i) {
    std::vector<int64_t> order(static_cast<size_t>(in));
    std::iota(order.begin(), order.end(), 0);
    const auto score = [&](int64_t j) {
      return std::abs(w[i][j].item<double>()) * norm[static_cast<size_t>(j)];
    };
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return score(a) < score(b); });
    for (int64_t q = 0; q < k; ++q) {
      keep[i][order[static_cast<size_t>(q)]] = false;
    }
  }
  return keep;
}

MoELayer copy_of(const MoELayer& layer) {
  return MoELayer(std::dynamic_pointer_cast<moeprune::MoELayerImpl>(layer->clone()));
}

// Checks every expert of `pruned` against the naive Wanda masks of `original`'s weights.
void check_wanda(const MoELayer& original, const MoELayer& pruned, const Routed& r, bool all,
                 bool weighted, const std::set<int64_t>& on_all_tokens = {}) {
  for (int64_t e = 0; e < kE; ++e) {
    const auto n = naive_inputs(r, original, e, all || on_all_tokens.count(e) > 0,
                                weighted && on_all_tokens.count(e) == 0);
    const auto check = [&](const torch::Tensor& before, const torch::Tensor& after,
                           const torch::Tensor& x, const char* which) {
      INFO("expert " << e << " " << which);
      const auto keep = naive_wanda_keep(before.t(), x, n.weight, 0.5);
      CHECK(torch::equal(after.t().ne(0), keep));
      CHECK(torch::equal(after.t().masked_select(keep), before.t().masked_select(keep)));
    };
    check(original->experts()->w1[e], pruned->experts()->w1[e], n.x, "gate");
    check(original->experts()->w3[e], pruned->experts()->w3[e], n.x, "up");
    check(original->experts()->w2[e], pruned->experts()->w2[e], n.h, "down");
  }
}

TEST_CASE("Wanda in experts: each expert's norms over exactly its routed tokens") {
  const auto r = routed_tokens(/*skip_last=*/false);
  const auto original = routed_layer();
  for (const bool weighted : {false, true}) {
    INFO("router weighted " << weighted);
    auto layer = copy_of(original);
    const auto reports = cm::sparsify_experts(
        *view_of(layer, r.tokens),
        cm::ExpertSparsityOptions().method(cm::SparsityMethod::kWanda).router_weighted(weighted));
    check_wanda(original, layer, r, /*all=*/false, weighted);
    REQUIRE(reports.size() == 1);
    // The relative error from the tokens themselves: sum_t g_t ||(W - W') x_t||^2 over every
    // expert linear, divided by the same for W.
    double error = 0, reference = 0;
    for (int64_t e = 0; e < kE; ++e) {
      const auto n = naive_inputs(r, original, e, false, weighted);
      const auto add = [&](const torch::Tensor& before, const torch::Tensor& after,
                           const torch::Tensor& x) {
        const auto w0 = before.t().to(torch::kDouble), w1 = after.t().to(torch::kDouble);
        error += (x.mm((w0 - w1).t()).pow(2) * n.weight.unsqueeze(1)).sum().item<double>();
        reference += (x.mm(w0.t()).pow(2) * n.weight.unsqueeze(1)).sum().item<double>();
      };
      add(original->experts()->w1[e], layer->experts()->w1[e], n.x);
      add(original->experts()->w3[e], layer->experts()->w3[e], n.x);
      add(original->experts()->w2[e], layer->experts()->w2[e], n.h);
    }
    // Computed in fp32 (summed in fp64) by the code: 1e-5 relative.
    CHECK(reports[0].relative_error == Approx(error / reference).epsilon(1e-5));
    CHECK(reports[0].layer_tokens == kT);
    CHECK(reports[0].routed_tokens == std::vector<int64_t>(kE, kT / 2));
    CHECK(reports[0].zeros == kE * 3 * kF * kD / 2);
    CHECK(reports[0].weights == kE * 3 * kF * kD);
  }
}

TEST_CASE("Wanda in experts: all-token calibration and the min_tokens fallback") {
  const auto r = routed_tokens(/*skip_last=*/true);
  const auto original = routed_layer();
  {
    auto layer = copy_of(original);
    cm::sparsify_experts(*view_of(layer, r.tokens), cm::ExpertSparsityOptions().calibration(
                                                        cm::ExpertCalibration::kAllTokens));
    check_wanda(original, layer, r, /*all=*/true, false);
  }
  {
    // Expert 3 is routed nothing: below the floor of 1 it is calibrated on every token.
    auto layer = copy_of(original);
    const auto reports = cm::sparsify_experts(*view_of(layer, r.tokens), {});
    check_wanda(original, layer, r, false, false, /*on_all_tokens=*/{3});
    // Token t goes to t % 3 and (t + 1) % 3: 27, 27, 26 and 0 tokens for experts 0..3 of 40.
    CHECK(reports[0].routed_tokens == std::vector<int64_t>{27, 27, 26, 0});
    CHECK(reports[0].fell_back == std::vector<bool>{false, false, false, true});
  }
  {
    auto layer = copy_of(original);
    const auto reports =
        cm::sparsify_experts(*view_of(layer, r.tokens), cm::ExpertSparsityOptions().min_tokens(27));
    // Fewer than 27: experts 2 and 3.
    CHECK(reports[0].fell_back == std::vector<bool>{false, false, true, true});
    check_wanda(original, layer, r, false, false, {2, 3});
  }
}

TEST_CASE("SparseGPT in experts: each expert on the Gram matrix of its routed tokens") {
  const auto r = routed_tokens(false);
  const auto original = routed_layer();
  auto layer = copy_of(original);
  const auto pattern = cm::SparsityPattern::n_of_m(2, 4);
  const auto reports =
      cm::sparsify_experts(*view_of(layer, r.tokens), cm::ExpertSparsityOptions()
                                                          .method(cm::SparsityMethod::kSparseGPT)
                                                          .pattern(pattern)
                                                          .router_weighted(true));
  double error = 0, reference = 0;
  for (int64_t e = 0; e < kE; ++e) {
    const auto n = naive_inputs(r, original, e, false, true);
    const auto check = [&](const torch::Tensor& before, const torch::Tensor& after,
                           const torch::Tensor& x, const char* which) {
      INFO("expert " << e << " " << which);
      const auto gram = (x * n.weight.unsqueeze(1)).t().mm(x);
      const auto expected = cm::sparsegpt(before.t(), gram, pattern).weight;
      // The same zeros; the kept weights within fp32 rounding (SparseGPT computes in fp32, and
      // the router weights here are fp64, the layer's fp32).
      CHECK(torch::equal(after.t().ne(0), expected.ne(0)));
      INFO("max diff " << (after.t() - expected).abs().max().item<double>());
      CHECK(torch::allclose(after.t(), expected, 1e-4, 1e-5));
      // Exactly 2 of every 4 consecutive inputs of each row kept.
      CHECK(torch::equal(after.t().ne(0).reshape({-1, 4}).sum(1),
                         torch::full({after.numel() / 4}, 2, torch::kLong)));
      // ||(W - W') X^T||^2 and ||W X^T||^2 over the weighted tokens, from the tokens themselves.
      const auto w0 = before.t().to(torch::kDouble), w1 = after.t().to(torch::kDouble);
      error += (x.mm((w0 - w1).t()).pow(2) * n.weight.unsqueeze(1)).sum().item<double>();
      reference += (x.mm(w0.t()).pow(2) * n.weight.unsqueeze(1)).sum().item<double>();
    };
    check(original->experts()->w1[e], layer->experts()->w1[e], n.x, "gate");
    check(original->experts()->w3[e], layer->experts()->w3[e], n.x, "up");
    check(original->experts()->w2[e], layer->experts()->w2[e], n.h, "down");
  }
  CHECK(reports[0].relative_error == Approx(error / reference).epsilon(1e-6));
  CHECK(reports[0].sparsity() == 0.5);
}

TEST_CASE("sequential sparsity calibrates each layer on the pruned layers before it") {
  auto base = moeprune::VisionTransformer(test::tiny_vit(2, {0, 1}));
  torch::manual_seed(5);
  const auto images = torch::randn({6, 1, 28, 28});
  const auto run = [&](bool sequential, std::vector<int64_t> layers,
                       moeprune::VisionTransformer m) {
    cm::sparsify_experts(*test::view(m, test::one_batch(images)),
                         cm::ExpertSparsityOptions()
                             .method(cm::SparsityMethod::kSparseGPT)
                             .sequential(sequential)
                             .layers(std::move(layers)));
    return m;
  };
  const auto w = [](const moeprune::VisionTransformer& m, int64_t block) {
    return m->moe_layers().at(static_cast<size_t>(block)).second->experts()->w1;
  };
  const auto seq = run(true, {}, test::round_trip(base, "seq"));
  const auto one_then_other = run(true, {1}, run(true, {0}, test::round_trip(base, "steps")));
  const auto together = run(false, {}, test::round_trip(base, "together"));
  const auto second_alone = run(true, {1}, test::round_trip(base, "second"));
  CHECK(torch::equal(w(seq, 1), w(one_then_other, 1)));
  CHECK(torch::equal(w(seq, 0), w(together, 0)));
  CHECK(torch::equal(w(together, 1), w(second_alone, 1)));
  CHECK_FALSE(torch::equal(w(seq, 1), w(together, 1)));
  // The biases of the ViT's experts are left alone.
  CHECK(torch::equal(seq->moe_layers().at(0).second->experts()->b1,
                     base->moe_layers().at(0).second->experts()->b1));
}

TEST_CASE("magnitude needs no calibration, the other methods and bad options are refused") {
  const auto r = routed_tokens(false);
  const auto original = routed_layer();
  {
    auto layer = copy_of(original);
    const auto reports =
        cm::sparsify_experts(*moeprune::LayerMapView::of({{0, layer}}),
                             cm::ExpertSparsityOptions().method(cm::SparsityMethod::kMagnitude));
    const auto w = original->experts()->w2[1].t();
    const auto kept = layer->experts()->w2[1].t().ne(0);
    // Each row keeps its 4 largest |w| of 8.
    const auto fourth = std::get<0>(w.abs().sort(1)).select(1, 3).unsqueeze(1);
    CHECK(torch::equal(kept, w.abs().gt(fourth)));
    CHECK(std::isnan(reports[0].relative_error));
  }
  auto layer = copy_of(original);
  const auto no_data = moeprune::LayerMapView::of({{0, layer}});
  CHECK_THROWS_WITH(cm::sparsify_experts(*no_data, {}),
                    Catch::Contains("wanda needs calibration data"));
  const auto v = view_of(layer, r.tokens);
  CHECK_THROWS_WITH(cm::sparsify_experts(*v, cm::ExpertSparsityOptions()
                                                 .calibration(cm::ExpertCalibration::kAllTokens)
                                                 .router_weighted(true)),
                    Catch::Contains("router weighting needs routed calibration"));
  CHECK_THROWS_WITH(cm::sparsify_experts(*v, cm::ExpertSparsityOptions().min_tokens(0)),
                    Catch::Contains("min_tokens should be at least 1"));
  CHECK_THROWS_WITH(cm::sparsify_experts(*v, cm::ExpertSparsityOptions().layers({7})),
                    Catch::Contains("no MoE layer or dense block keyed 7"));
  CHECK_THROWS_WITH(cm::sparsify_experts(*v, cm::ExpertSparsityOptions().layers({0, 0})),
                    Catch::Contains("block 0 is asked for twice"));
  CHECK_THROWS_WITH(cm::sparsify_experts(*v, cm::ExpertSparsityOptions().pattern({})),
                    Catch::Contains("fraction in (0, 1)"));
  CHECK_THROWS_WITH(cm::parse_sparsity_method("obs"),
                    Catch::Contains("magnitude, wanda or sparsegpt"));
  // Nothing was changed by the refused calls.
  CHECK(torch::equal(layer->experts()->w1, original->experts()->w1));
  layer->experts()->factorize(2);
  CHECK_THROWS_WITH(cm::sparsify_experts(*v, {}), Catch::Contains("is factorised"));
}

TEST_CASE("GPTQ inside the experts quantises each on its routed tokens' Gram matrix") {
  const auto r = routed_tokens(false);
  const auto original = routed_layer();
  // Asymmetric: a symmetric group whose largest |w| is negative codes it at exactly -2^(b-1) + 1/2
  // before rounding, a tie that the Gram matrix's last bits decide in GPTQ.
  const auto scheme = cm::QuantScheme().bits(3).group_size(4).symmetric(false);
  auto layer = copy_of(original);
  // fp64 on both sides: GPTQ's rounding cascades from any near-tie in the Gram matrix's last bits.
  const auto fp64 = cm::GPTQOptions().dtype(torch::kDouble);
  const auto reports = cm::quantize(*view_of(layer, r.tokens),
                                    cm::QuantizeOptions().scheme(scheme).gptq(fp64).calibration(
                                        cm::ExpertSparsityOptions().router_weighted(true)));
  REQUIRE(reports.layers.size() == 1);
  for (int64_t e = 0; e < kE; ++e) {
    INFO("expert " << e);
    const auto n = naive_inputs(r, original, e, false, true);
    const auto xw = n.x * n.weight.sqrt().unsqueeze(1), hw = n.h * n.weight.sqrt().unsqueeze(1);
    const auto expect = [&](const torch::Tensor& w, const torch::Tensor& x) {
      return cm::gptq(w.t().contiguous(), x.t().mm(x), scheme, fp64).weight;
    };
    CHECK(torch::allclose(layer->experts()->w1[e].t(), expect(original->experts()->w1[e], xw), 1e-5,
                          1e-6));
    CHECK(torch::allclose(layer->experts()->w3[e].t(), expect(original->experts()->w3[e], xw), 1e-5,
                          1e-6));
    CHECK(torch::allclose(layer->experts()->w2[e].t(), expect(original->experts()->w2[e], hw), 1e-5,
                          1e-6));
  }
  CHECK(reports.layers[0].relative_error > 0.0);
  CHECK(reports.layers[0].routed_tokens == std::vector<int64_t>{20, 20, 20, 20});

  // RTN needs no calibration: every expert weight rounded as rtn_quantize rounds it.
  auto rtn = copy_of(original);
  const auto rtn_reports =
      cm::quantize(*moeprune::LayerMapView::of({{0, rtn}}),
                   cm::QuantizeOptions().method(cm::QuantMethod::kRTN).scheme(scheme));
  CHECK(std::isnan(rtn_reports.layers[0].relative_error));
  for (int64_t e = 0; e < kE; ++e) {
    const auto w = original->experts()->w2[e].t().contiguous();
    CHECK(torch::equal(rtn->experts()->w2[e].t(), cm::rtn_quantize(w, scheme).dequantize()));
  }
  CHECK_THROWS_WITH(
      cm::quantize(*moeprune::LayerMapView::of({{0, rtn}}), cm::QuantizeOptions().scheme(scheme)),
      Catch::Contains("gptq needs calibration data"));
  CHECK_THROWS_WITH(cm::quantize(*view_of(rtn, r.tokens),
                                 cm::QuantizeOptions().scheme(cm::QuantScheme().group_size(3))),
                    Catch::Contains("layer 0's expert gate/up projections has 8 inputs, not a "
                                    "whole number of groups of 3"));
  CHECK_THROWS_WITH(cm::parse_quant_method("hqq"), Catch::Contains("rtn, gptq or awq"));
}

}  // namespace expert_sparsity_test
