#include <moeprune/compression/residual_similarity.h>

#include <torch/torch.h>

#include <algorithm>

namespace moeprune::compression {

void CosineMean::add(torch::Tensor a, const torch::Tensor& b) {
  TORCH_CHECK(a.dim() >= 1 && b.dim() == a.dim() && a.size(-1) == b.size(-1),
              "CosineMean: states of shapes ", a.sizes(), " and ", b.sizes(), " do not match");
  if (a.size(0) != b.size(0)) {
    TORCH_CHECK(a.size(0) > 0 && b.size(0) % a.size(0) == 0, "CosineMean: a batch of ", b.size(0),
                " is not a multiple of ", a.size(0));
    a = a.repeat_interleave(b.size(0) / a.size(0), 0);
  }
  TORCH_CHECK(a.sizes() == b.sizes(), "CosineMean: states of shapes ", a.sizes(), " and ",
              b.sizes(), " do not match");
  const int64_t d = a.size(-1);
  const auto cos = torch::cosine_similarity(a.reshape({-1, d}).to(torch::kDouble),
                                            b.reshape({-1, d}).to(torch::kDouble), 1);
  sum_ += cos.sum().item<double>();
  tokens_ += cos.numel();
}

std::vector<int64_t> highest_scores(const std::vector<std::pair<int64_t, double>>& scored,
                                    int64_t n) {
  TORCH_CHECK(n >= 0 && n <= static_cast<int64_t>(scored.size()), "highest_scores: ", n, " of ",
              scored.size(), " scores asked for");
  auto sorted = scored;
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) {
    out.push_back(sorted[static_cast<size_t>(i)].first);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace moeprune::compression
