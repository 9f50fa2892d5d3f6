#include <moeprune/compression/weight_sparsity.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>

namespace moeprune::compression {
namespace weight_sparsity_detail {

void check_pattern(const SparsityPattern& p) {
  if (p.is_n_of_m()) {
    TORCH_CHECK(p.n >= 1 && p.n < p.m,
                "sparsity N:M should keep 0 < N < M weights of every M, got ", p.n, ":", p.m);
  } else {
    TORCH_CHECK(p.ratio > 0.0 && p.ratio < 1.0,
                "unstructured sparsity should be a fraction in (0, 1), got ", p.ratio);
  }
}

void check_weight(const torch::Tensor& weight, const SparsityPattern& pattern, const char* what) {
  TORCH_CHECK(
      weight.dim() == 2 && weight.size(0) >= 1 && weight.size(1) >= 1 && weight.is_floating_point(),
      what, ": the weight should be a floating [out, in] matrix, got ", weight.sizes(), " ",
      weight.scalar_type());
  check_pattern(pattern);
  TORCH_CHECK(!pattern.is_n_of_m() || weight.size(1) % pattern.m == 0, what, ": ",
              pattern.describe(), " needs the inputs in whole groups of ", pattern.m,
              ", the weight has ", weight.size(1));
}

// Kept (true) for scores [out, in]: the lowest of each row go (or of each group of M), ties by
// input index, the lower first (a stable sort).
torch::Tensor prune_lowest_per_row(const torch::Tensor& scores, const SparsityPattern& pattern) {
  const int64_t rows = scores.size(0), cols = scores.size(1);
  auto keep = torch::ones({rows, cols}, torch::kBool);
  if (pattern.is_n_of_m()) {
    const auto grouped = scores.reshape({rows, cols / pattern.m, pattern.m});
    const auto order = std::get<1>(grouped.sort(std::optional<bool>(true), /*dim=*/-1));
    keep.view({rows, cols / pattern.m, pattern.m})
        .scatter_(-1, order.narrow(-1, 0, pattern.m - pattern.n), false);
  } else {
    // locuslab/wanda: int(W_metric.shape[1] * sparsity_ratio) of each row.
    const auto k = static_cast<int64_t>(static_cast<double>(cols) * pattern.ratio);
    if (k == 0) return keep;
    // The first k of a stable ascending sort, without sorting (a row of an expert has thousands
    // of inputs, and experts hundreds of rows): every score below the row's k-th smallest, then
    // as many scores equal to it as are still needed, lowest input index first.
    const auto kth = std::get<0>(scores.kthvalue(k, /*dim=*/1, /*keepdim=*/true));
    const auto below = scores.lt(kth), tied = scores.eq(kth);
    const auto needed = k - below.sum(1, /*keepdim=*/true);
    keep = below.logical_or(tied.logical_and(tied.cumsum(1).le(needed))).logical_not();
  }
  return keep;
}

}  // namespace weight_sparsity_detail

SparsityPattern SparsityPattern::unstructured(double ratio) {
  SparsityPattern p;
  p.ratio = ratio;
  weight_sparsity_detail::check_pattern(p);
  return p;
}

SparsityPattern SparsityPattern::n_of_m(int64_t n, int64_t m) {
  TORCH_CHECK(m >= 2, "sparsity N:M should have M >= 2, got ", n, ":", m);
  SparsityPattern p;
  p.n = n;
  p.m = m;
  weight_sparsity_detail::check_pattern(p);
  return p;
}

SparsityPattern SparsityPattern::parse(const std::string& text) {
  const auto fail = [&text] {
    TORCH_CHECK(false, "sparsity '", text, "': give a fraction (0.5) or N:M (2:4)");
  };
  const auto colon = text.find(':');
  double ratio = 0.0;
  long long n = 0, m = 0;
  try {
    size_t used = 0;
    if (colon == std::string::npos) {
      ratio = std::stod(text, &used);
      if (used != text.size()) fail();
    } else {
      const auto first = text.substr(0, colon), second = text.substr(colon + 1);
      n = std::stoll(first, &used);
      if (used != first.size()) fail();
      m = std::stoll(second, &used);
      if (used != second.size()) fail();
    }
  } catch (const std::invalid_argument&) {
    fail();
  } catch (const std::out_of_range&) {
    fail();
  }
  return colon == std::string::npos ? unstructured(ratio) : n_of_m(n, m);
}

double SparsityPattern::pruned_fraction() const {
  return is_n_of_m() ? static_cast<double>(m - n) / static_cast<double>(m) : ratio;
}

std::string SparsityPattern::describe() const {
  if (is_n_of_m()) return std::to_string(n) + ":" + std::to_string(m);
  char text[32];
  std::snprintf(text, sizeof text, "%g%% unstructured", 100.0 * ratio);
  return text;
}

InputStatistics::InputStatistics(int64_t in_features, bool full)
    : in_features_(in_features), full_(full) {
  TORCH_CHECK(in_features >= 1, "InputStatistics: in_features should be >= 1, got ", in_features);
  sums_ = full ? torch::zeros({in_features, in_features}, torch::kDouble)
               : torch::zeros({in_features}, torch::kDouble);
  abs_sums_ = torch::zeros({in_features}, torch::kDouble);
}

void InputStatistics::add(const torch::Tensor& x, const torch::Tensor& token_weights) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == in_features() && x.is_floating_point(),
              "InputStatistics: inputs should be floating [tokens, ", in_features(), "], got ",
              x.sizes(), " ", x.scalar_type());
  torch::NoGradGuard no_grad;
  auto xd = x.detach().to(torch::kCPU, torch::kDouble);
  if (token_weights.defined()) {
    TORCH_CHECK(token_weights.dim() == 1 && token_weights.size(0) == x.size(0),
                "InputStatistics: token weights should be [", x.size(0), "], got ",
                token_weights.sizes());
    const auto w = token_weights.detach().to(torch::kCPU, torch::kDouble);
    TORCH_CHECK(w.ge(0).all().item<bool>() && w.isfinite().all().item<bool>(),
                "InputStatistics: token weights should be finite and >= 0");
    abs_sums_.add_(xd.abs().mul(w.unsqueeze(1)).sum(0));
    weight_sum_ += w.sum().item<double>();
    // sum_t w_t x_t x_t^T = (sqrt(w) x)^T (sqrt(w) x).
    xd = xd * w.sqrt().unsqueeze(1);
  } else {
    abs_sums_.add_(xd.abs().sum(0));
    weight_sum_ += static_cast<double>(x.size(0));
  }
  if (full_) {
    sums_.addmm_(xd.t(), xd);
  } else {
    sums_.add_(xd.square().sum(0));
  }
  tokens_ += x.size(0);
}

const torch::Tensor& InputStatistics::gram() const {
  TORCH_CHECK(full_,
              "InputStatistics: these statistics keep the diagonal only (full = false), "
              "not the Gram matrix");
  return sums_;
}

torch::Tensor InputStatistics::column_norms() const {
  return (full_ ? sums_.diagonal() : sums_).clamp_min(0.0).sqrt();
}

torch::Tensor InputStatistics::mean_abs() const {
  return weight_sum_ > 0.0 ? abs_sums_ / weight_sum_ : torch::zeros_like(abs_sums_);
}

torch::Tensor magnitude_mask(const torch::Tensor& weight, const SparsityPattern& pattern) {
  weight_sparsity_detail::check_weight(weight, pattern, "magnitude_mask");
  torch::NoGradGuard no_grad;
  return weight_sparsity_detail::prune_lowest_per_row(weight.detach().to(torch::kCPU).abs(),
                                                      pattern);
}

torch::Tensor wanda_mask(const torch::Tensor& weight, const torch::Tensor& norms,
                         const SparsityPattern& pattern) {
  weight_sparsity_detail::check_weight(weight, pattern, "wanda_mask");
  TORCH_CHECK(norms.dim() == 1 && norms.size(0) == weight.size(1),
              "wanda_mask: the input norms should be [", weight.size(1), "], got ", norms.sizes());
  torch::NoGradGuard no_grad;
  // locuslab/wanda: W_metric = |W| * sqrt(scaler_row), in the weight's dtype promoted to fp64 here.
  const auto scores = weight.detach().to(torch::kCPU, torch::kDouble).abs() *
                      norms.detach().to(torch::kCPU, torch::kDouble).unsqueeze(0);
  return weight_sparsity_detail::prune_lowest_per_row(scores, pattern);
}

namespace weight_sparsity_detail {

void check_sparsegpt_options(const SparseGPTOptions& options) {
  TORCH_CHECK(options.percdamp() >= 0.0, "sparsegpt: percdamp should be >= 0, got ",
              options.percdamp());
  const auto type = options.dtype();
  TORCH_CHECK(type == torch::kFloat || type == torch::kDouble,
              "sparsegpt: computes in fp32 or fp64, got ", type);
}

}  // namespace weight_sparsity_detail

SparseGPTFactor sparsegpt_factor(const torch::Tensor& gram, const SparseGPTOptions& options) {
  weight_sparsity_detail::check_sparsegpt_options(options);
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) >= 1 && gram.size(0) == gram.size(1),
              "sparsegpt: the inputs' Gram matrix should be square, got ", gram.sizes());
  const int64_t cols = gram.size(0);
  torch::NoGradGuard no_grad;
  auto H = gram.detach().to(torch::kCPU, options.dtype()).clone();
  // Inputs no token reached: pruned, and their Hessian row made harmless (sparsegpt.py "dead").
  SparseGPTFactor f;
  f.dead = H.diagonal().eq(0);
  H.diagonal().masked_fill_(f.dead, 1.0);
  H.diagonal().add_(options.percdamp() * H.diagonal().mean().item<double>());
  // The upper Cholesky factor of H^-1: its row j holds what pruning column j does to the later
  // columns (sparsegpt.py: cholesky, cholesky_inverse, cholesky upper).
  const auto [lower, info] = torch::linalg_cholesky_ex(H);
  TORCH_CHECK(info.item<int64_t>() == 0, "sparsegpt: the inputs' Hessian (", cols, " x ", cols,
              ") is not positive definite even with percdamp ", options.percdamp(),
              ": too few calibration tokens, or raise percdamp");
  f.upper = torch::linalg_cholesky(torch::cholesky_inverse(lower), /*upper=*/true);
  return f;
}

SparseGPTResult sparsegpt(const torch::Tensor& weight, const torch::Tensor& gram,
                          const SparsityPattern& pattern, const SparseGPTOptions& options) {
  weight_sparsity_detail::check_weight(weight, pattern, "sparsegpt");
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) == weight.size(1) && gram.size(1) == weight.size(1),
              "sparsegpt: the inputs' Gram matrix should be [", weight.size(1), ", ",
              weight.size(1), "], got ", gram.sizes());
  return sparsegpt(weight, sparsegpt_factor(gram, options), pattern, options);
}

SparseGPTResult sparsegpt(const torch::Tensor& weight, const SparseGPTFactor& factor,
                          const SparsityPattern& pattern, const SparseGPTOptions& options) {
  weight_sparsity_detail::check_weight(weight, pattern, "sparsegpt");
  weight_sparsity_detail::check_sparsegpt_options(options);
  const int64_t rows = weight.size(0), cols = weight.size(1), bs = options.block_size();
  TORCH_CHECK(factor.upper.defined() && factor.upper.dim() == 2 && factor.upper.size(0) == cols &&
                  factor.upper.size(1) == cols && factor.dead.defined() &&
                  factor.dead.numel() == cols,
              "sparsegpt: the Hessian factor should be [", cols, ", ", cols,
              "] (sparsegpt_factor "
              "of the inputs' Gram matrix)");
  TORCH_CHECK(bs >= 1 && (!pattern.is_n_of_m() || bs % pattern.m == 0),
              "sparsegpt: block_size should be >= 1 and a multiple of M, got ", bs);
  const auto type = options.dtype();
  torch::NoGradGuard no_grad;
  auto W = weight.detach().to(torch::kCPU, type).clone();
  const auto U = factor.upper.to(type);
  const auto& dead = factor.dead;
  W.masked_fill_(dead.unsqueeze(0), 0.0);
  // U's diagonal on the host: one read instead of one per column.
  const auto diagonal = U.diagonal().to(torch::kDouble).contiguous();
  const auto* diag = diagonal.data_ptr<double>();
  auto keep = torch::ones({rows, cols}, torch::kBool);
  auto loss = torch::zeros({}, torch::kDouble);
  for (int64_t i1 = 0; i1 < cols; i1 += bs) {
    const int64_t count = std::min(bs, cols - i1);
    auto W1 = W.narrow(1, i1, count).clone();
    auto Q1 = torch::zeros_like(W1), Err1 = torch::zeros_like(W1);
    const auto Hinv1 = U.narrow(0, i1, count).narrow(1, i1, count);
    const auto d1 = Hinv1.diagonal();
    auto pruned1 = torch::zeros({rows, count}, torch::kBool);
    if (!pattern.is_n_of_m()) {
      const auto score = W1.square() / d1.square().unsqueeze(0);
      const auto k = static_cast<int64_t>(static_cast<double>(score.numel()) * pattern.ratio);
      const auto thresh = std::get<0>(score.flatten().sort())[k];
      pruned1 = score.le(thresh);
    }
    for (int64_t i = 0; i < count; ++i) {
      if (pattern.is_n_of_m() && i % pattern.m == 0) {
        const auto score =
            W1.narrow(1, i, pattern.m).square() / d1.narrow(0, i, pattern.m).square().unsqueeze(0);
        const auto order = std::get<1>(score.sort(std::optional<bool>(true), /*dim=*/1));
        pruned1.narrow(1, i, pattern.m)
            .scatter_(1, order.narrow(1, 0, pattern.m - pattern.n), true);
      }
      const auto w = W1.select(1, i);
      const double d = diag[i1 + i];
      const auto q = w.masked_fill(pruned1.select(1, i), 0.0);
      Q1.select(1, i).copy_(q);
      const auto err = (w - q) / d;
      // sum (w - q)^2 / d^2 / 2 = sum err^2 / 2
      loss.add_(err.square().sum(), 0.5);
      W1.narrow(1, i, count - i)
          .sub_(err.unsqueeze(1).mm(Hinv1.select(0, i).narrow(0, i, count - i).unsqueeze(0)));
      Err1.select(1, i).copy_(err);
    }
    W.narrow(1, i1, count).copy_(Q1);
    if (i1 + count < cols) {
      W.narrow(1, i1 + count, cols - i1 - count)
          .sub_(Err1.mm(U.narrow(0, i1, count).narrow(1, i1 + count, cols - i1 - count)));
    }
    keep.narrow(1, i1, count).copy_(pruned1.logical_not());
  }
  keep.masked_fill_(dead.unsqueeze(0), false);
  return {W.to(weight.scalar_type()), keep, loss.item<double>()};
}

}  // namespace moeprune::compression
