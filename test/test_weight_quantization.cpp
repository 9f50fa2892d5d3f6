// Weight quantisation (compression/weight_quantization.h): RTN against hand-computed groups, GPTQ
// against a naive fp64 implementation of the paper's algorithm (one column at a time, the
// remaining columns' inverse Hessian updated by elimination, no Cholesky and no lazy blocks).
#include <moeprune/compression/weight_quantization.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

namespace weight_quantization_test {

namespace cm = moeprune::compression;

torch::Tensor rows(std::vector<std::vector<float>> values) {
  const auto n = static_cast<int64_t>(values.front().size());
  std::vector<float> flat;
  for (const auto& r : values) flat.insert(flat.end(), r.begin(), r.end());
  return torch::tensor(flat).reshape({static_cast<int64_t>(values.size()), n});
}

TEST_CASE("RTN codes, scales and zero points of hand-computed groups") {
  // Group 0 of row 0, symmetric 4-bit: max |w| = 7.5, s = 7.5 / 7.5 = 1; 7.5 rounds to 8 and is
  // clamped to 7. Group 1: max |w| = 1.5, s = 0.2.
  const auto w = rows({{7.5f, -2.2f, 3.6f, 0.0f, 0.2f, -1.5f, 0.0f, 0.9f}});
  const auto q = cm::rtn_quantize(w, cm::QuantScheme().bits(4).group_size(4));
  CHECK(
      torch::equal(q.codes, torch::tensor({7, -2, 4, 0, 1, -8, 0, 4}, torch::kChar).view({1, 8})));
  CHECK(torch::allclose(q.scales, torch::tensor({1.0f, 0.2f}).view({1, 2})));
  CHECK(torch::equal(q.zeros, torch::zeros({1, 2}, torch::kChar)));
  CHECK(torch::equal(q.g_idx, torch::tensor({0, 0, 0, 0, 1, 1, 1, 1}, torch::kInt)));
  CHECK(
      torch::allclose(q.dequantize(), rows({{7.0f, -2.0f, 4.0f, 0.0f, 0.2f, -1.6f, 0.0f, 0.8f}})));

  // Asymmetric 4-bit: all positive (the range still holds 0): s = 3 / 15 = 0.2, z = -8; all
  // negative: s = 0.2, z = round(-8 + 3 / 0.2) = 7; both: s = 0.2, z = round(-8 + 3.3) = -5.
  const auto a =
      rows({{1.0f, 3.0f, 2.5f, 0.5f}, {-1.0f, -3.0f, -0.5f, -2.0f}, {-0.66f, 2.34f, 1.0f, 0.45f}});
  const auto qa = cm::rtn_quantize(a, cm::QuantScheme().bits(4).group_size(0).symmetric(false));
  CHECK(torch::equal(
      qa.codes,
      torch::tensor({-3, 7, 4, -6, 2, -8, 5, -3, -8, 7, 0, -3}, torch::kChar).view({3, 4})));
  CHECK(torch::equal(qa.zeros, torch::tensor({-8, 7, -5}, torch::kChar).view({3, 1})));
  CHECK(torch::allclose(qa.scales, torch::tensor({0.2f, 0.2f, 0.2f}).view({3, 1})));
  CHECK(torch::allclose(
      qa.dequantize(),
      rows({{1.0f, 3.0f, 2.4f, 0.4f}, {-1.0f, -3.0f, -0.4f, -2.0f}, {-0.6f, 2.4f, 1.0f, 0.4f}})));
  // An all-zero row codes as zeros.
  const auto z = cm::rtn_quantize(torch::zeros({1, 4}), cm::QuantScheme().bits(3).group_size(0));
  CHECK(torch::equal(z.dequantize(), torch::zeros({1, 4})));
}

TEST_CASE("RTN rounds each scale to the stored dtype before coding the group") {
  // Symmetric 4-bit, max |w| = 1: s = 1 / 7.5 = 0.13333 in fp32; bf16 keeps 8 significant bits:
  // 0.13333 = 136.53 * 2^-10, stored as 137 * 2^-10 = 0.1337890625. 0.868 / 0.13333 = 6.51 codes
  // as 7, 0.868 / 0.13379 = 6.488 as 6.
  const auto w = rows({{1.0f, 0.868f, 0.0f, -0.3f}});
  const auto fp32 = cm::rtn_quantize(w, cm::QuantScheme().bits(4).group_size(0));
  CHECK(fp32.codes[0][1].item<int>() == 7);
  const auto bf16 =
      cm::rtn_quantize(w, cm::QuantScheme().bits(4).group_size(0).scale_dtype(torch::kBFloat16));
  CHECK(bf16.scales.item<float>() == 0.1337890625f);
  CHECK(torch::equal(bf16.codes, torch::tensor({7, 6, 0, -2}, torch::kChar).view({1, 4})));
  // The stored scale reproduces the weights exactly: s * q is exact in fp32 (8 + 4 bits).
  CHECK(bf16.dequantize()[0][1].item<float>() == 6 * 0.1337890625f);
  CHECK_THROWS_WITH(cm::rtn_quantize(w, cm::QuantScheme().scale_dtype(torch::kInt)),
                    Catch::Contains("scale_dtype should be a floating dtype"));
}

// The group parameters from the formulas (compressed-tensors' calculate_qparams), per row.
std::pair<torch::Tensor, torch::Tensor> naive_params(const torch::Tensor& w,
                                                     const cm::QuantScheme& s) {
  const double qmin = -std::pow(2.0, s.bits() - 1), qmax = std::pow(2.0, s.bits() - 1) - 1;
  auto scale = torch::zeros({w.size(0)}, torch::kDouble), zero = torch::zeros_like(scale);
  for (int64_t r = 0; r < w.size(0); ++r) {
    const double lo = std::min(0.0, w[r].min().item<double>());
    const double hi = std::max(0.0, w[r].max().item<double>());
    double sc = s.symmetric() ? std::max(-lo, hi) / ((qmax - qmin) / 2) : (hi - lo) / (qmax - qmin);
    // Stored in the scheme's scale dtype (a bf16 scale keeps 8 significant bits), rounded to
    // nearest even by c10's conversion.
    if (s.scale_dtype() == torch::kBFloat16)
      sc = static_cast<float>(c10::BFloat16(static_cast<float>(sc)));
    if (s.scale_dtype() == torch::kFloat) sc = static_cast<float>(sc);
    if (sc == 0) sc = 1;
    scale[r] = sc;
    zero[r] = s.symmetric() ? 0.0 : std::clamp(std::nearbyint(qmin - lo / sc), qmin, qmax);
  }
  return {scale, zero};
}

struct NaiveGPTQ {
  torch::Tensor codes, scales, zeros, weight;  // scales/zeros: [out, groups] by group id
};

// GPTQ as the paper states it (OBQ's greedy order replaced by a fixed one): for each column in
// order, quantise it, spread its error over the remaining columns with the inverse Hessian of
// the remaining columns, then remove the column from that inverse by one elimination step.
NaiveGPTQ naive_gptq(torch::Tensor W, torch::Tensor H, const cm::QuantScheme& s, bool act_order,
                     bool static_groups, double percdamp) {
  W = W.to(torch::kDouble).clone();
  H = H.to(torch::kDouble).clone();
  const int64_t rows = W.size(0), cols = W.size(1);
  const int64_t gs = s.group_size() == 0 ? cols : s.group_size();
  const double qmin = -std::pow(2.0, s.bits() - 1), qmax = std::pow(2.0, s.bits() - 1) - 1;
  for (int64_t j = 0; j < cols; ++j) {
    if (H[j][j].item<double>() == 0) {
      H[j][j] = 1.0;
      W.select(1, j).zero_();
    }
  }
  std::vector<int64_t> order(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) order[static_cast<size_t>(j)] = j;
  if (act_order) {
    const auto d = H.diagonal().clone();
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return d[a].item<double>() > d[b].item<double>();
    });
  }
  H.diagonal().add_(percdamp * H.diagonal().mean().item<double>());
  auto Hinv = torch::inverse(H);
  NaiveGPTQ out;
  out.codes = torch::zeros({rows, cols}, torch::kDouble);
  out.scales = torch::zeros({rows, cols / gs}, torch::kDouble);
  out.zeros = torch::zeros_like(out.scales);
  const auto W0 = W.clone();
  torch::Tensor scale, zero;
  for (int64_t k = 0; k < cols; ++k) {
    const int64_t j = order[static_cast<size_t>(k)];
    if (static_groups) {
      std::tie(scale, zero) = naive_params(W0.narrow(1, j / gs * gs, gs), s);
    } else if (k % gs == 0) {
      std::vector<int64_t> members(order.begin() + k, order.begin() + k + gs);
      std::tie(scale, zero) = naive_params(W.index_select(1, torch::tensor(members)), s);
      out.scales.select(1, k / gs).copy_(scale);
      out.zeros.select(1, k / gs).copy_(zero);
    }
    const auto w = W.select(1, j).clone();
    const auto c = (w / scale).round().add(zero).clamp(qmin, qmax);
    const auto q = scale * (c - zero);
    out.codes.select(1, j).copy_(c);
    const double d = Hinv[j][j].item<double>();
    const auto err = (w - q) / d;
    std::vector<int64_t> rest(order.begin() + k + 1, order.end());
    if (!rest.empty()) {
      const auto r = torch::tensor(rest);
      W.index_copy_(
          1, r, W.index_select(1, r) - err.unsqueeze(1) * Hinv[j].index_select(0, r).unsqueeze(0));
    }
    W.select(1, j).copy_(q);
    Hinv = Hinv - Hinv.select(1, j).unsqueeze(1).mm(Hinv.select(0, j).unsqueeze(0)) / d;
  }
  if (static_groups) {
    for (int64_t g = 0; g < cols / gs; ++g) {
      std::tie(scale, zero) = naive_params(W0.narrow(1, g * gs, gs), s);
      out.scales.select(1, g).copy_(scale);
      out.zeros.select(1, g).copy_(zero);
    }
  }
  out.weight = W;
  return out;
}

TEST_CASE("GPTQ equals a naive column-by-column implementation of the paper") {
  torch::manual_seed(11);
  const auto W = torch::randn({6, 16}, torch::kDouble);
  auto X = torch::randn({40, 16}, torch::kDouble) * torch::linspace(0.2, 2.0, 16, torch::kDouble);
  X.select(1, 5).zero_();  // an input no token reaches
  const auto H = X.t().mm(X);
  struct Case {
    cm::QuantScheme scheme;
    bool act_order, static_groups;
  };
  // fp64 scales (no rounding) as the naive computation's, and bf16 ones (each rounded first).
  const auto fp64 = cm::QuantScheme().scale_dtype(torch::kDouble);
  const std::vector<Case> cases{
      {cm::QuantScheme(fp64).bits(4).group_size(4), false, false},
      {cm::QuantScheme(fp64).bits(3).group_size(8).symmetric(false), false, false},
      {cm::QuantScheme(fp64).bits(4).group_size(0).symmetric(false), false, false},
      {cm::QuantScheme(fp64).bits(2).group_size(4), true, false},
      {cm::QuantScheme(fp64).bits(4).group_size(4).symmetric(false), true, true},
      {cm::QuantScheme(fp64).bits(8).group_size(16), true, false},
      {cm::QuantScheme().bits(4).group_size(4).scale_dtype(torch::kBFloat16), true, false},
      {cm::QuantScheme().bits(3).group_size(0).symmetric(false).scale_dtype(torch::kBFloat16),
       false, false},
  };
  for (const auto& c : cases) {
    INFO(c.scheme.describe() << " scales " << c.scheme.scale_dtype()
                             << (c.act_order ? " act-order" : "")
                             << (c.static_groups ? " static" : ""));
    const auto naive = naive_gptq(W, H, c.scheme, c.act_order, c.static_groups, 0.01);
    const auto got = cm::gptq(W, H, c.scheme,
                              cm::GPTQOptions()
                                  .block_size(8)
                                  .act_order(c.act_order)
                                  .static_groups(c.static_groups)
                                  .dtype(torch::kDouble));
    CHECK(torch::equal(got.quantized.codes.to(torch::kDouble), naive.codes));
    CHECK(torch::allclose(got.quantized.scales.to(torch::kDouble), naive.scales, 1e-6, 0));
    CHECK(torch::equal(got.quantized.zeros.to(torch::kDouble), naive.zeros));
    CHECK(torch::allclose(got.weight, naive.weight, 1e-10, 1e-12));
    CHECK(torch::allclose(got.quantized.dequantize(torch::kDouble), naive.weight, 1e-6, 1e-7));
    CHECK(got.weight.select(1, 5).eq(0).all().item<bool>());
  }
}

TEST_CASE("GPTQ's output error is below RTN's on its calibration inputs") {
  torch::manual_seed(12);
  const auto W = torch::randn({32, 64});
  // Correlated inputs (GPTQ gains nothing over RTN when H is diagonal).
  const auto X = torch::randn({256, 16}).mm(torch::randn({16, 64})) + 0.1 * torch::randn({256, 64});
  const auto scheme = cm::QuantScheme().bits(3).group_size(16);
  const auto error = [&](const torch::Tensor& q) {
    return X.mm((W - q).t()).square().sum().item<double>();
  };
  const auto rtn = error(cm::rtn_quantize(W, scheme).dequantize());
  const auto g = error(cm::gptq(W, X.t().mm(X).to(torch::kDouble), scheme).weight);
  CHECK(g < 0.5 * rtn);
}

TEST_CASE("quantisation refuses unsupported schemes and a singular Hessian") {
  const auto W = torch::randn({4, 16});
  const auto H = torch::eye(16, torch::kDouble);
  CHECK_THROWS_WITH(cm::rtn_quantize(W, cm::QuantScheme().bits(5)),
                    Catch::Contains("bits should be 2, 3, 4 or 8, got 5"));
  CHECK_THROWS_WITH(cm::rtn_quantize(W, cm::QuantScheme().group_size(6)),
                    Catch::Contains("group_size 6 does not divide the 16 inputs"));
  CHECK_THROWS_WITH(
      cm::gptq(W, H, cm::QuantScheme().group_size(4), cm::GPTQOptions().static_groups(true)),
      Catch::Contains("set act_order too"));
  CHECK_THROWS_WITH(cm::gptq(W, torch::eye(8, torch::kDouble), cm::QuantScheme().group_size(4)),
                    Catch::Contains("Gram matrix should be [16, 16]"));
  // Two tokens of 16 inputs and no damping: rank 2.
  const auto X = torch::randn({2, 16}, torch::kDouble);
  CHECK_THROWS_WITH(
      cm::gptq(W, X.t().mm(X), cm::QuantScheme().group_size(4), cm::GPTQOptions().percdamp(0.0)),
      Catch::Contains("not positive definite"));
}

// AWQ as llm-awq states it, on the tokens themselves (no Gram matrix): for each alpha, s from
// the tokens' mean |x|, the weight W diag(s) rounded to nearest and divided back, the output error
// summed over tokens; then, on the chosen scaled weight and the tokens x / s, each row's group
// clipped to the shrink whose partial output is closest; ties go to the first.
struct NaiveAWQ {
  double ratio = 0.0;
  torch::Tensor scales, weight;
};
NaiveAWQ naive_awq(const torch::Tensor& W, const torch::Tensor& X, const cm::QuantScheme& scheme,
                   int64_t grid, double max_shrink, bool clip) {
  const auto rtn = [](const torch::Tensor& w, const cm::QuantScheme& s) {
    return cm::rtn_quantize(w, s).dequantize(torch::kFloat);
  };
  const auto mean_abs = X.abs().mean(0).to(torch::kFloat);
  NaiveAWQ out;
  double best = 1e300;
  for (int64_t i = 0; i < grid; ++i) {
    const double ratio = static_cast<double>(i) / static_cast<double>(grid);
    auto s = mean_abs.pow(ratio).clamp_min(1e-4);
    s = s / (s.max() * s.min()).sqrt();
    const auto q = rtn(W * s, scheme) / s;
    double error = 0.0;
    for (int64_t t = 0; t < X.size(0); ++t) {
      const auto x = X[t].to(torch::kDouble);
      error +=
          (q.to(torch::kDouble).mv(x) - W.to(torch::kDouble).mv(x)).square().sum().item<double>();
    }
    if (error < best) {
      best = error;
      out.ratio = ratio;
      out.scales = s;
    }
  }
  auto Ws = W * out.scales;
  const auto Xs = X.to(torch::kDouble) / out.scales.to(torch::kDouble);
  const int64_t cols = W.size(1), gs = scheme.group_size() == 0 ? cols : scheme.group_size();
  const auto per_row = cm::QuantScheme(scheme).group_size(0);
  if (clip) {
    for (int64_t r = 0; r < W.size(0); ++r) {
      for (int64_t g = 0; g < cols / gs; ++g) {
        const auto w = Ws[r].narrow(0, g * gs, gs).clone();
        const auto x = Xs.narrow(1, g * gs, gs);
        const double top = w.abs().max().item<double>();
        double best_error = 1e300, best_max = top;
        for (int64_t i = 0; i < static_cast<int64_t>(max_shrink * grid); ++i) {
          const double m = top * (1.0 - static_cast<double>(i) / static_cast<double>(grid));
          const auto c = w.clamp(-m, m);
          const auto q = rtn(c.unsqueeze(0), per_row)[0];
          const double e = (x.mv(q.to(torch::kDouble)) - x.mv(w.to(torch::kDouble)))
                               .square()
                               .sum()
                               .item<double>();
          if (e < best_error) {
            best_error = e;
            best_max = m;
          }
        }
        Ws[r].narrow(0, g * gs, gs).copy_(w.clamp(-best_max, best_max));
      }
    }
  }
  out.weight = rtn(Ws, scheme) / out.scales;
  return out;
}

TEST_CASE("AWQ's scales and clipping equal a naive search on the tokens") {
  torch::manual_seed(13);
  // Inputs of very different magnitudes (what AWQ's scales are for), and an outlier weight.
  const auto X = torch::randn({64, 16}) * torch::linspace(0.05, 4.0, 16);
  auto W = torch::randn({6, 16});
  W[2][3] = 9.0f;
  const auto gram = X.to(torch::kDouble).t().mm(X.to(torch::kDouble));
  const auto mean_abs = X.abs().mean(0);
  for (const auto& scheme : {cm::QuantScheme().bits(4).group_size(8),
                             cm::QuantScheme().bits(3).group_size(0).symmetric(false)}) {
    for (const bool clip : {false, true}) {
      INFO(scheme.describe() << (clip ? " clip" : ""));
      const auto naive = naive_awq(W, X, scheme, 20, 0.5, clip);
      const auto got = cm::awq(W, gram, mean_abs, scheme, cm::AWQOptions().clip(clip));
      CHECK(got.ratio == naive.ratio);
      CHECK(torch::allclose(got.input_scales, naive.scales, 1e-6, 0));
      CHECK(torch::allclose(got.weight, naive.weight, 1e-5, 1e-6));
      CHECK(torch::allclose(got.quantized.dequantize() / got.input_scales, got.weight, 1e-6, 1e-7));
    }
  }
  // Its output error is below RTN's here (the inputs' magnitudes span 80x).
  const auto error = [&](const torch::Tensor& q) {
    const auto d = (q - W).to(torch::kDouble);
    return d.mm(gram).mul(d).sum().item<double>();
  };
  const auto scheme = cm::QuantScheme().bits(3).group_size(8);
  CHECK(error(cm::awq(W, gram, mean_abs, scheme).weight) <
        error(cm::rtn_quantize(W, scheme).dequantize()));
  CHECK_THROWS_WITH(cm::awq(W, gram, mean_abs.narrow(0, 0, 4), scheme),
                    Catch::Contains("mean magnitudes should be [16]"));
  CHECK_THROWS_WITH(cm::awq(W, gram, mean_abs, scheme, cm::AWQOptions().max_shrink(1.0)),
                    Catch::Contains("max_shrink should be in [0, 1)"));
}

}  // namespace weight_quantization_test
