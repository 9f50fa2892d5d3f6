#pragma once

// Logit computation shared by the router modules: fp32 logits (as Switch and Mixtral compute
// them), optional multiplicative input jitter (Switch) and gaussian logit noise (V-MoE), both
// only while training, and the checks that name bad input.
#include <torch/torch.h>

#include <string>
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

// The first non-finite value of 2-D `t`, as "<row_word> r, <col_word> c: value"; "" if none.
inline std::string first_non_finite(const torch::Tensor& t, const char* row_word,
                                    const char* col_word) {
  const auto flat = t.detach().reshape({-1});
  const auto at = torch::logical_not(torch::isfinite(flat)).nonzero();
  if (at.numel() == 0) {
    return "";
  }
  const int64_t i = at[0][0].item<int64_t>(), cols = t.size(-1);
  return std::string(row_word) + " " + std::to_string(i / cols) + ", " + col_word + " " +
         std::to_string(i % cols) + ": " + std::to_string(flat[i].item<double>());
}

// The logits of a finite input and a finite router are finite unless their products overflow
// fp32; the error says which of the three it is. One check per call (it reads the logits back,
// so on CUDA it synchronises: check_finite(false) turns it off, docs/cuda.md).
inline void check_finite_logits(const torch::Tensor& logits, const torch::Tensor& tokens,
                                const torch::Tensor& weight, const char* who) {
  if (torch::isfinite(logits).all().item<bool>()) {
    return;
  }
  const auto in_tokens = first_non_finite(tokens, "token", "feature");
  TORCH_CHECK(in_tokens.empty(), who, ": the input tokens hold NaN or inf (", in_tokens,
              "), so the router logits do");
  const auto in_weight = first_non_finite(weight, "expert", "feature");
  TORCH_CHECK(in_weight.empty(), who, ": the router weight holds NaN or inf (", in_weight, ")");
  TORCH_CHECK(false, who, ": router logits overflow float32 (",
              first_non_finite(logits, "token", "expert"),
              ") although the tokens and the router weight are finite");
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
