#pragma once

// Logit computation shared by the router modules: fp32 logits (as Switch and Mixtral compute
// them), optional multiplicative input jitter (Switch) and gaussian logit noise (V-MoE), both
// only while training, and the checks that name bad input.
#include <torch/torch.h>

#include <vector>

namespace moeprune::detail {

inline void check_router_input(const torch::Tensor& tokens, int64_t d_model, const char* who) {
  TORCH_CHECK(tokens.dim() == 2, who, ": tokens should be a 2-D [tokens, d_model] tensor, got ",
              tokens.dim(), "-D ", tokens.sizes());
  TORCH_CHECK(tokens.size(1) == d_model, who, ": tokens have width ", tokens.size(1),
              " but the router expects d_model = ", d_model);
  TORCH_CHECK(tokens.is_floating_point(), who, ": tokens should be floating point, got ",
              tokens.scalar_type());
}

inline torch::Tensor router_logits(const torch::Tensor& tokens, const torch::Tensor& weight,
                                   double jitter, bool training) {
  auto x = tokens.to(torch::kFloat);
  if (training && jitter > 0.0) {
    x = x * torch::empty_like(x).uniform_(1.0 - jitter, 1.0 + jitter);
  }
  return torch::matmul(x, weight.to(torch::kFloat).t());
}

inline void check_finite_logits(const torch::Tensor& logits, const char* who) {
  TORCH_CHECK(torch::isfinite(logits).all().item<bool>(), who,
              ": router logits contain NaN or inf (check the input tokens and the router weight)");
}

// Logits plus N(0, (noise_std / E)^2) noise while training; the logits themselves otherwise.
inline torch::Tensor noisy(const torch::Tensor& logits, double noise_std, int64_t num_experts,
                           bool training) {
  if (!training || noise_std <= 0.0) {
    return logits;
  }
  return logits + torch::randn_like(logits) * (noise_std / static_cast<double>(num_experts));
}

// Keeps the router rows `rows` (increasing, distinct, in [0, E)) of `weight` in place, so the
// parameter keeps its identity; any gradient is dropped with the old shape.
inline void keep_router_rows(torch::Tensor& weight, const std::vector<int64_t>& rows,
                             const char* who) {
  const int64_t E = weight.size(0);
  TORCH_CHECK(!rows.empty(), who, ": cannot remove every router row");
  for (size_t i = 0; i < rows.size(); ++i) {
    TORCH_CHECK(rows[i] >= 0 && rows[i] < E, who, ": router row ", rows[i], " is outside [0, ", E,
                ")");
    TORCH_CHECK(i == 0 || rows[i] > rows[i - 1], who,
                ": router rows to keep should be increasing and distinct");
  }
  torch::NoGradGuard no_grad;
  weight.set_data(weight.index_select(0, torch::tensor(rows, torch::kLong).to(weight.device())));
  weight.mutable_grad() = torch::Tensor();
}

}  // namespace moeprune::detail
