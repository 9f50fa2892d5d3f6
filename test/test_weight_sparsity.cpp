// Sparsity inside a linear layer (compression/weight_sparsity.h) against naive fp64 versions of
// the papers' equations written here with plain loops: Wanda's per-row scores |W_ij| ||X_j||_2
// (Sun et al. 2023, section 3), SparseGPT's OBS step one column at a time with every later column
// updated at once, no lazy blocks (Frantar & Alistarh 2023, Algorithm 1; IST-DASLab/sparsegpt's
// mask rule), the Gram matrix as a sum over tokens.
#include <moeprune/compression/weight_sparsity.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

// A named namespace (helpers and cases): the test binary compiles in unity batches, where another
// file's anonymous helpers of the same name would collide.
namespace weight_sparsity_test {

using moeprune::compression::InputStatistics;
using moeprune::compression::SparseGPTOptions;
using moeprune::compression::SparsityPattern;

// The indices of `scores` (one row or group) in ascending order, ties by index.
std::vector<int64_t> ascending(const std::vector<double>& scores) {
  std::vector<int64_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return scores[a] < scores[b]; });
  return order;
}

// Kept weights by per-row scores, naive: k = floor(in x ratio) lowest of each row, or the M - N
// lowest of each group of M.
torch::Tensor naive_keep(const torch::Tensor& scores, const SparsityPattern& p) {
  const auto s = scores.to(torch::kDouble).contiguous();
  const int64_t rows = s.size(0), cols = s.size(1);
  auto keep = torch::ones({rows, cols}, torch::kBool);
  const auto* v = s.data_ptr<double>();
  auto* k = keep.data_ptr<bool>();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t span = p.is_n_of_m() ? p.m : cols;
    const auto drop =
        p.is_n_of_m() ? p.m - p.n : static_cast<int64_t>(static_cast<double>(cols) * p.ratio);
    for (int64_t g = 0; g < cols; g += span) {
      const std::vector<double> row(v + r * cols + g, v + r * cols + g + span);
      const auto order = ascending(row);
      for (int64_t i = 0; i < drop; ++i) k[r * cols + g + order[i]] = false;
    }
  }
  return keep;
}

// SparseGPT, naive fp64: H^-1 by inversion (not Cholesky), its upper Cholesky factor U; then for
// each column j in order: at a block start (unstructured) or a group start (N:M) choose the mask
// from the weights as updated so far; q = w_j masked; err = (w_j - q) / U_jj; every later column
// c: W_c -= err U_jc.
torch::Tensor naive_sparsegpt(const torch::Tensor& weight, const torch::Tensor& gram,
                              const SparsityPattern& p, int64_t block, double percdamp) {
  auto W = weight.to(torch::kDouble).clone();
  auto H = gram.to(torch::kDouble).clone();
  const int64_t rows = W.size(0), cols = W.size(1);
  double mean_diag = 0.0;
  for (int64_t j = 0; j < cols; ++j) {
    if (H[j][j].item<double>() == 0.0) {
      H[j][j] = 1.0;
      W.select(1, j).zero_();
    }
    mean_diag += H[j][j].item<double>() / static_cast<double>(cols);
  }
  for (int64_t j = 0; j < cols; ++j) H[j][j] += percdamp * mean_diag;
  const auto U = torch::linalg_cholesky(torch::inverse(H)).t().contiguous();
  auto pruned = torch::zeros({rows, cols}, torch::kBool);
  for (int64_t j = 0; j < cols; ++j) {
    const bool new_block = j % block == 0;
    if (!p.is_n_of_m() && new_block) {
      const int64_t count = std::min(block, cols - j);
      std::vector<double> scores;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = j; c < j + count; ++c) {
          const double u = U[c][c].item<double>();
          scores.push_back(W[r][c].item<double>() * W[r][c].item<double>() / (u * u));
        }
      }
      auto sorted = scores;
      std::sort(sorted.begin(), sorted.end());
      const double thresh =
          sorted[static_cast<size_t>(static_cast<double>(scores.size()) * p.ratio)];
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = j; c < j + count; ++c) {
          pruned[r][c] = scores[static_cast<size_t>(r * count + (c - j))] <= thresh;
        }
      }
    }
    if (p.is_n_of_m() && j % p.m == 0) {
      for (int64_t r = 0; r < rows; ++r) {
        std::vector<double> scores;
        for (int64_t c = j; c < j + p.m; ++c) {
          const double u = U[c][c].item<double>();
          scores.push_back(W[r][c].item<double>() * W[r][c].item<double>() / (u * u));
        }
        const auto order = ascending(scores);
        for (int64_t i = 0; i < p.m - p.n; ++i) pruned[r][j + order[i]] = true;
      }
    }
    const double d = U[j][j].item<double>();
    for (int64_t r = 0; r < rows; ++r) {
      if (!pruned[r][j].item<bool>()) continue;
      const double err = W[r][j].item<double>() / d;
      for (int64_t c = j + 1; c < cols; ++c) {
        W[r][c] -= err * U[j][c].item<double>();
      }
      W[r][j] = 0.0;
    }
  }
  return W;
}

double relative(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).norm().item<double>() /
         b.to(torch::kDouble).norm().item<double>();
}

// Calibration inputs with unequal column scales, as real activations have (Wanda's point).
torch::Tensor inputs(int64_t tokens, int64_t in, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn({tokens, in}, torch::kDouble) *
         torch::linspace(0.2, 3.0, in, torch::kDouble).unsqueeze(0);
}

TEST_CASE("InputStatistics sums the (weighted) tokens' outer products") {
  const auto x = inputs(7, 5, 1).to(torch::kFloat);
  const auto w = torch::tensor({0.5, 1.0, 0.0, 2.0, 0.25, 1.0, 3.0}, torch::kDouble);
  InputStatistics stats(5), diagonal(5, /*full=*/false);
  for (auto* s : {&stats, &diagonal}) {
    s->add(x.narrow(0, 0, 3), w.narrow(0, 0, 3));
    s->add(x.narrow(0, 3, 4), w.narrow(0, 3, 4));
  }
  CHECK(stats.tokens() == 7);
  CHECK_THROWS_WITH(diagonal.gram(), Catch::Contains("keep the diagonal only"));
  const auto xd = x.to(torch::kDouble);
  for (int64_t a = 0; a < 5; ++a) {
    double norm = 0.0;
    for (int64_t b = 0; b < 5; ++b) {
      double sum = 0.0;
      for (int64_t t = 0; t < 7; ++t) {
        sum += w[t].item<double>() * xd[t][a].item<double>() * xd[t][b].item<double>();
      }
      CHECK(stats.gram()[a][b].item<double>() == Approx(sum).epsilon(1e-12).margin(1e-12));
    }
    for (int64_t t = 0; t < 7; ++t)
      norm += w[t].item<double>() * std::pow(xd[t][a].item<double>(), 2);
    CHECK(stats.column_norms()[a].item<double>() == Approx(std::sqrt(norm)).epsilon(1e-12));
    CHECK(diagonal.column_norms()[a].item<double>() == Approx(std::sqrt(norm)).epsilon(1e-12));
  }
  CHECK_THROWS_WITH(stats.add(x.narrow(1, 0, 4)), Catch::Contains("[tokens, 5]"));
  CHECK_THROWS_WITH(stats.add(x, -w), Catch::Contains("finite and >= 0"));
}

TEST_CASE("ties in a row go by input index, the lower pruned first") {
  // Half of 8: the 0.5, then three of the five 1s: inputs 0, 1 and 2 (hand-worked).
  const auto row = torch::tensor({1.0, -1.0, 1.0, 1.0, 2.0, -2.0, 0.5, 1.0}).unsqueeze(0);
  const auto keep = moeprune::compression::magnitude_mask(row, SparsityPattern::unstructured(0.5));
  CHECK(torch::equal(
      keep, torch::tensor({false, false, false, true, true, true, false, true}).unsqueeze(0)));
  // Every score equal: the first k inputs go.
  const auto flat = moeprune::compression::magnitude_mask(torch::ones({2, 4}),
                                                          SparsityPattern::unstructured(0.75));
  CHECK(torch::equal(flat, torch::tensor({false, false, false, true}).unsqueeze(0).expand({2, 4})));
}

TEST_CASE("magnitude and Wanda masks keep the largest scores of each row or group") {
  torch::manual_seed(3);
  const auto weight = torch::randn({6, 16});
  const auto x = inputs(40, 16, 4);
  InputStatistics stats(16);
  stats.add(x);
  for (const auto& p : {SparsityPattern::unstructured(0.5), SparsityPattern::unstructured(0.3),
                        SparsityPattern::n_of_m(2, 4), SparsityPattern::n_of_m(4, 8)}) {
    INFO(p.describe());
    CHECK(torch::equal(moeprune::compression::magnitude_mask(weight, p),
                       naive_keep(weight.abs(), p)));
    // Wanda's scores from the norms computed here by hand.
    const auto norms = x.square().sum(0).sqrt();
    const auto keep = moeprune::compression::wanda_mask(weight, stats.column_norms(), p);
    CHECK(torch::equal(keep, naive_keep(weight.abs().to(torch::kDouble) * norms, p)));
    // The input norms change the mask (else Wanda would be magnitude).
    CHECK_FALSE(torch::equal(keep, moeprune::compression::magnitude_mask(weight, p)));
    if (p.is_n_of_m()) {
      CHECK(torch::all(keep.reshape({6, -1, p.m}).sum(-1).eq(p.n)).item<bool>());
    } else {
      CHECK(torch::all(keep.logical_not().sum(1).eq(static_cast<int64_t>(16 * p.ratio)))
                .item<bool>());
    }
  }
}

TEST_CASE("SparseGPT equals the one-column-at-a-time OBS updates") {
  torch::manual_seed(5);
  const int64_t out = 6, in = 24;
  const auto weight = torch::randn({out, in}, torch::kDouble);
  auto x = inputs(64, in, 6);
  x.select(1, 7).zero_();  // an input no token reaches
  InputStatistics stats(in);
  stats.add(x);
  for (const auto& p : {SparsityPattern::unstructured(0.5), SparsityPattern::n_of_m(2, 4)}) {
    for (const int64_t block : {int64_t{8}, int64_t{24}}) {
      INFO(p.describe() << ", blocks of " << block);
      const auto expected = naive_sparsegpt(weight, stats.gram(), p, block, 0.01);
      const auto result = moeprune::compression::sparsegpt(
          weight, stats.gram(), p, SparseGPTOptions().block_size(block).dtype(torch::kDouble));
      CHECK(torch::equal(result.weight.ne(0), expected.ne(0)));
      CHECK(torch::equal(result.mask, expected.ne(0)));
      CHECK(relative(result.weight, expected) < 1e-10);
      CHECK(result.mask.select(1, 7).any().item<bool>() == false);
      if (p.is_n_of_m()) {
        CHECK(torch::all(result.mask.reshape({out, -1, 4}).sum(-1).le(2)).item<bool>());
        // The dead input aside, every group keeps exactly N.
        CHECK(torch::all(result.mask.narrow(1, 8, 16).reshape({out, -1, 4}).sum(-1).eq(2))
                  .item<bool>());
      }
      // The computation in fp32 (the default) chooses the same mask on these inputs.
      const auto fp32 = moeprune::compression::sparsegpt(weight.to(torch::kFloat), stats.gram(), p,
                                                         SparseGPTOptions().block_size(block));
      CHECK(fp32.weight.scalar_type() == torch::kFloat);
      CHECK(torch::equal(fp32.mask, result.mask));
      CHECK(relative(fp32.weight, expected) < 1e-4);
    }
  }
}

TEST_CASE("SparseGPT's updates lower the layer's error on its calibration inputs") {
  // OBS compensates the pruned weights on the kept ones: at the same 50% the output error
  // ||X W^T - X W'^T|| is below Wanda's (the kept weights unchanged) and magnitude's.
  torch::manual_seed(8);
  const auto weight = torch::randn({16, 64}, torch::kDouble);
  const auto x = inputs(256, 64, 9);
  InputStatistics stats(64);
  stats.add(x);
  const auto p = SparsityPattern::unstructured(0.5);
  const auto error = [&](const torch::Tensor& w) {
    return (x.mm(weight.t()) - x.mm(w.to(torch::kDouble).t())).norm().item<double>();
  };
  const auto sgpt = moeprune::compression::sparsegpt(weight, stats.gram(), p,
                                                     SparseGPTOptions().dtype(torch::kDouble));
  const double e_sgpt = error(sgpt.weight);
  const double e_wanda =
      error(weight * moeprune::compression::wanda_mask(weight, stats.column_norms(), p));
  const double e_magnitude = error(weight * moeprune::compression::magnitude_mask(weight, p));
  CAPTURE(e_sgpt, e_wanda, e_magnitude);
  CHECK(e_sgpt < e_wanda);
  CHECK(e_wanda < e_magnitude);
}

TEST_CASE("sparsity patterns and inputs that make no sense are refused") {
  CHECK(SparsityPattern::parse("0.5").ratio == 0.5);
  CHECK(SparsityPattern::parse("2:4").n == 2);
  CHECK(SparsityPattern::parse("2:4").pruned_fraction() == 0.5);
  CHECK_THROWS_WITH(SparsityPattern::parse("1.5"), Catch::Contains("fraction in (0, 1), got 1.5"));
  CHECK_THROWS_WITH(SparsityPattern::parse("0"), Catch::Contains("fraction in (0, 1)"));
  CHECK_THROWS_WITH(SparsityPattern::parse("4:2"), Catch::Contains("0 < N < M"));
  CHECK_THROWS_WITH(SparsityPattern::parse("half"), Catch::Contains("sparsity 'half'"));
  CHECK_THROWS_WITH(SparsityPattern::parse("2:4x"), Catch::Contains("give a fraction"));
  const auto weight = torch::randn({4, 6});
  CHECK_THROWS_WITH(moeprune::compression::magnitude_mask(weight, SparsityPattern::n_of_m(2, 4)),
                    Catch::Contains("whole groups of 4, the weight has 6"));
  CHECK_THROWS_WITH(moeprune::compression::wanda_mask(weight, torch::ones({5}),
                                                      SparsityPattern::unstructured(0.5)),
                    Catch::Contains("input norms should be [6]"));
  CHECK_THROWS_WITH(
      moeprune::compression::sparsegpt(weight, torch::eye(5), SparsityPattern::unstructured(0.5)),
      Catch::Contains("Gram matrix should be [6, 6]"));
  CHECK_THROWS_WITH(moeprune::compression::sparsegpt(torch::randn({4, 8}), torch::eye(8),
                                                     SparsityPattern::n_of_m(2, 4),
                                                     SparseGPTOptions().block_size(6)),
                    Catch::Contains("multiple of M"));
  // One token of ones for 6 inputs, no damping: H is all ones, singular (its Cholesky meets an
  // exact zero pivot), refused with the reason.
  InputStatistics one(6);
  one.add(torch::ones({1, 6}));
  CHECK_THROWS_WITH(
      moeprune::compression::sparsegpt(weight, one.gram(), SparsityPattern::unstructured(0.5),
                                       SparseGPTOptions().percdamp(0.0)),
      Catch::Contains("not positive definite"));
}

}  // namespace weight_sparsity_test
