#include <moeprune/compression/linear_assignment.h>

#include <torch/torch.h>

#include <cmath>
#include <limits>

namespace moeprune::compression {

std::vector<int64_t> linear_assignment(const torch::Tensor& cost, bool maximize) {
  TORCH_CHECK(cost.dim() == 2 && cost.size(0) == cost.size(1),
              "linear_assignment: cost should be a square [n, n] matrix, got ", cost.sizes());
  const auto c = (maximize ? -cost : cost).detach().to(torch::kCPU, torch::kDouble).contiguous();
  TORCH_CHECK(torch::isfinite(c).all().item<bool>(),
              "linear_assignment: cost has non-finite entries");
  const int64_t n = c.size(0);
  if (n == 0) {
    return {};
  }
  const auto a = c.accessor<double, 2>();
  constexpr double kInf = std::numeric_limits<double>::infinity();
  // 1-based arrays with a virtual column 0; u, v are the dual potentials, match[j] the row
  // assigned to column j, way[j] the previous column on the augmenting path.
  std::vector<double> u(n + 1, 0.0), v(n + 1, 0.0), min_slack(n + 1);
  std::vector<int64_t> match(n + 1, 0), way(n + 1, 0);
  std::vector<char> used(n + 1);
  for (int64_t row = 1; row <= n; ++row) {
    match[0] = row;
    int64_t col = 0;
    std::fill(min_slack.begin(), min_slack.end(), kInf);
    std::fill(used.begin(), used.end(), 0);
    do {
      used[col] = 1;
      const int64_t i = match[col];
      double delta = kInf;
      int64_t next = 0;
      for (int64_t j = 1; j <= n; ++j) {
        if (used[j]) {
          continue;
        }
        const double slack = a[i - 1][j - 1] - u[i] - v[j];
        if (slack < min_slack[j]) {
          min_slack[j] = slack;
          way[j] = col;
        }
        if (min_slack[j] < delta) {
          delta = min_slack[j];
          next = j;
        }
      }
      for (int64_t j = 0; j <= n; ++j) {
        if (used[j]) {
          u[match[j]] += delta;
          v[j] -= delta;
        } else {
          min_slack[j] -= delta;
        }
      }
      col = next;
    } while (match[col] != 0);
    do {  // flip the augmenting path
      const int64_t prev = way[col];
      match[col] = match[prev];
      col = prev;
    } while (col != 0);
  }
  std::vector<int64_t> assignment(static_cast<size_t>(n));
  for (int64_t j = 1; j <= n; ++j) {
    assignment[static_cast<size_t>(match[j] - 1)] = j - 1;
  }
  return assignment;
}

}  // namespace moeprune::compression
