#include <moeprune/compression/weight_quantization.h>

#include <torch/torch.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

namespace moeprune::compression {
namespace weight_quantization_detail {

void check_weight(const torch::Tensor& weight, const QuantScheme& scheme, const char* what) {
  TORCH_CHECK(
      weight.dim() == 2 && weight.size(0) >= 1 && weight.size(1) >= 1 && weight.is_floating_point(),
      what, ": the weight should be a floating [out, in] matrix, got ", weight.sizes(), " ",
      weight.scalar_type());
  check_quant_scheme(scheme, weight.size(1));
}

int64_t group_size_of(const QuantScheme& scheme, int64_t cols) {
  return scheme.group_size() == 0 ? cols : scheme.group_size();
}

// Codes of `w` [rows, n] with per-row `scale`, `zero` [rows]: clamp(round(w / s) + z).
torch::Tensor codes_of(const torch::Tensor& w, const torch::Tensor& scale,
                       const torch::Tensor& zero, const QuantScheme& scheme) {
  return (w / scale.unsqueeze(1))
      .round()
      .add(zero.unsqueeze(1))
      .clamp(static_cast<double>(scheme.qmin()), static_cast<double>(scheme.qmax()));
}

}  // namespace weight_quantization_detail

std::string QuantScheme::describe() const {
  return "W" + std::to_string(bits()) + " " +
         (group_size() == 0 ? std::string("per channel") : "g" + std::to_string(group_size())) +
         (symmetric() ? " symmetric" : " asymmetric");
}

void check_quant_scheme(const QuantScheme& scheme, int64_t in_features) {
  const auto b = scheme.bits();
  TORCH_CHECK(b == 2 || b == 3 || b == 4 || b == 8,
              "quantisation: bits should be 2, 3, 4 or 8, got ", b);
  TORCH_CHECK(scheme.group_size() >= 0,
              "quantisation: group_size should be >= 1 (or 0 for one "
              "group per row), got ",
              scheme.group_size());
  TORCH_CHECK(at::isFloatingType(scheme.scale_dtype()),
              "quantisation: scale_dtype should be a floating dtype, got ", scheme.scale_dtype());
  TORCH_CHECK(scheme.group_size() == 0 || in_features % scheme.group_size() == 0,
              "quantisation: group_size ", scheme.group_size(), " does not divide the ",
              in_features, " inputs");
}

std::pair<torch::Tensor, torch::Tensor> quant_params(const torch::Tensor& w,
                                                     const QuantScheme& scheme) {
  TORCH_CHECK(w.dim() == 2 && w.is_floating_point(),
              "quant_params: rows should be a floating [rows, n] matrix, got ", w.sizes());
  const auto range = static_cast<double>(scheme.qmax() - scheme.qmin());
  // The range always holds 0 (compressed-tensors' calculate_qparams, GPTQ's find_params).
  const auto lo = std::get<0>(w.min(1)).clamp_max(0.0);
  const auto hi = std::get<0>(w.max(1)).clamp_min(0.0);
  torch::Tensor scale, zero;
  if (scheme.symmetric()) {
    scale = torch::maximum(lo.abs(), hi) / (range / 2.0);
    zero = torch::zeros_like(scale);
  } else {
    scale = (hi - lo) / range;
  }
  // Stored in scale_dtype: the zero point and codes come from the stored value. An all-zero row
  // (or a scale below the dtype's range): any positive scale codes it as zeros (the reference
  // uses 1 there).
  scale = scale.to(scheme.scale_dtype()).to(scale.scalar_type());
  scale = torch::where(scale.eq(0), torch::ones_like(scale), scale);
  if (!scheme.symmetric()) {
    zero = (static_cast<double>(scheme.qmin()) - lo / scale)
               .round()
               .clamp(static_cast<double>(scheme.qmin()), static_cast<double>(scheme.qmax()));
  }
  return {scale, zero};
}

torch::Tensor QuantizedWeight::dequantize(torch::Dtype dtype) const {
  TORCH_CHECK(codes.defined() && scales.defined() && zeros.defined() && g_idx.defined(),
              "QuantizedWeight: empty");
  const auto idx = g_idx.to(torch::kLong);
  const auto s = scales.index_select(1, idx);
  const auto z = zeros.to(torch::kFloat).index_select(1, idx);
  return (s * (codes.to(torch::kFloat) - z)).to(dtype);
}

QuantizedWeight rtn_quantize(const torch::Tensor& weight, const QuantScheme& scheme) {
  using namespace weight_quantization_detail;
  check_weight(weight, scheme, "rtn_quantize");
  torch::NoGradGuard no_grad;
  const auto W = weight.detach().to(torch::kCPU, torch::kFloat);
  const int64_t rows = W.size(0), cols = W.size(1), gs = group_size_of(scheme, cols);
  const int64_t groups = cols / gs;
  QuantizedWeight q;
  q.codes = torch::empty({rows, cols}, torch::kChar);
  q.scales = torch::empty({rows, groups}, torch::kFloat);
  q.zeros = torch::empty({rows, groups}, torch::kChar);
  for (int64_t g = 0; g < groups; ++g) {
    const auto w = W.narrow(1, g * gs, gs);
    const auto [scale, zero] = quant_params(w, scheme);
    q.codes.narrow(1, g * gs, gs).copy_(codes_of(w, scale, zero, scheme));
    q.scales.select(1, g).copy_(scale);
    q.zeros.select(1, g).copy_(zero);
  }
  q.g_idx = torch::arange(cols, torch::kInt).div(gs, "floor").to(torch::kInt);
  return q;
}

GPTQResult gptq(const torch::Tensor& weight, const torch::Tensor& gram, const QuantScheme& scheme,
                const GPTQOptions& options) {
  using namespace weight_quantization_detail;
  check_weight(weight, scheme, "gptq");
  const int64_t rows = weight.size(0), cols = weight.size(1), gs = group_size_of(scheme, cols);
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) == cols && gram.size(1) == cols,
              "gptq: the inputs' Gram matrix should be [", cols, ", ", cols, "], got ",
              gram.sizes());
  TORCH_CHECK(options.percdamp() >= 0.0, "gptq: percdamp should be >= 0, got ", options.percdamp());
  TORCH_CHECK(options.block_size() >= 1, "gptq: block_size should be >= 1, got ",
              options.block_size());
  TORCH_CHECK(!options.static_groups() || options.act_order(),
              "gptq: static_groups only changes act_order's groups; set act_order too");
  const auto type = options.dtype();
  torch::NoGradGuard no_grad;
  auto W = weight.detach().to(torch::kCPU, type).clone();
  auto H = gram.detach().to(torch::kCPU, type).clone();
  // Inputs no token reached: weights zeroed, their Hessian row made harmless (gptq.py "dead").
  const auto dead = H.diagonal().eq(0);
  H.diagonal().masked_fill_(dead, 1.0);
  W.masked_fill_(dead.unsqueeze(0), 0.0);
  const int64_t groups = cols / gs;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> static_params;
  if (options.static_groups()) {
    for (int64_t g = 0; g < groups; ++g)
      static_params.push_back(quant_params(W.narrow(1, g * gs, gs), scheme));
  }
  torch::Tensor perm;
  if (options.act_order()) {
    perm = H.diagonal().argsort(/*stable=*/true, /*dim=*/0, /*descending=*/true);
    W = W.index_select(1, perm);
    H = H.index_select(0, perm).index_select(1, perm);
  }
  // Per channel: one group, its parameters from the whole (dead-zeroed) row before any update.
  std::optional<std::pair<torch::Tensor, torch::Tensor>> per_channel;
  if (gs == cols && !options.static_groups()) per_channel = quant_params(W, scheme);
  H.diagonal().add_(options.percdamp() * H.diagonal().mean().item<double>());
  const auto [lower, info] = torch::linalg_cholesky_ex(H);
  TORCH_CHECK(info.item<int64_t>() == 0, "gptq: the inputs' Hessian (", cols, " x ", cols,
              ") is not positive definite even with percdamp ", options.percdamp(),
              ": too few calibration tokens, or raise percdamp");
  const auto U = torch::linalg_cholesky(torch::cholesky_inverse(lower), /*upper=*/true);
  const auto diagonal = U.diagonal().to(torch::kDouble).contiguous();
  const auto* diag = diagonal.data_ptr<double>();
  // Blocks hold whole groups: a group's parameters come from its columns as updated so far.
  int64_t bs = options.block_size();
  bs = gs >= bs ? gs : std::max<int64_t>(gs, bs / gs * gs);

  auto Q = torch::empty({rows, cols}, type);
  auto codes = torch::empty({rows, cols}, type);
  // Parameters per group in the order the columns are taken (position k / gs).
  auto scales = torch::empty({rows, groups}, torch::kFloat);
  auto zeros = torch::empty({rows, groups}, torch::kFloat);
  double loss = 0.0;
  const auto perm_acc = options.act_order() ? perm.contiguous() : torch::Tensor();
  for (int64_t i1 = 0; i1 < cols; i1 += bs) {
    const int64_t count = std::min(bs, cols - i1);
    auto W1 = W.narrow(1, i1, count).clone();
    auto Err1 = torch::zeros_like(W1);
    const auto Hinv1 = U.narrow(0, i1, count).narrow(1, i1, count);
    torch::Tensor scale, zero;
    for (int64_t i = 0; i < count; ++i) {
      const int64_t k = i1 + i;
      if (options.static_groups()) {
        const int64_t original = perm_acc[k].item<int64_t>();
        std::tie(scale, zero) = static_params[static_cast<size_t>(original / gs)];
      } else if (per_channel) {
        std::tie(scale, zero) = *per_channel;
      } else if (k % gs == 0) {
        std::tie(scale, zero) = quant_params(W1.narrow(1, i, gs), scheme);
      }
      if (!options.static_groups() && k % gs == 0) {
        scales.select(1, k / gs).copy_(scale);
        zeros.select(1, k / gs).copy_(zero);
      }
      const auto w = W1.select(1, i);
      const auto c = codes_of(w.unsqueeze(1), scale.to(type), zero.to(type), scheme).squeeze(1);
      const auto q = scale.to(type) * (c - zero.to(type));
      codes.select(1, k).copy_(c);
      Q.select(1, k).copy_(q);
      const double d = diag[k];
      const auto err = (w - q) / d;
      loss += (w - q).square().sum().item<double>() / (d * d) / 2.0;
      W1.narrow(1, i, count - i)
          .sub_(err.unsqueeze(1).mm(Hinv1.narrow(0, i, 1).narrow(1, i, count - i)));
      Err1.select(1, i).copy_(err);
    }
    if (i1 + count < cols) {
      W.narrow(1, i1 + count, cols - i1 - count)
          .sub_(Err1.mm(U.narrow(0, i1, count).narrow(1, i1 + count, cols - i1 - count)));
    }
  }
  GPTQResult result;
  result.loss = loss;
  auto& out = result.quantized;
  if (options.act_order()) {
    const auto inverse = perm.argsort();
    Q = Q.index_select(1, inverse);
    codes = codes.index_select(1, inverse);
  }
  out.codes = codes.to(torch::kChar);
  if (options.static_groups()) {
    out.scales = torch::empty({rows, groups}, torch::kFloat);
    out.zeros = torch::empty({rows, groups}, torch::kChar);
    for (int64_t g = 0; g < groups; ++g) {
      out.scales.select(1, g).copy_(static_params[static_cast<size_t>(g)].first);
      out.zeros.select(1, g).copy_(static_params[static_cast<size_t>(g)].second);
    }
    out.g_idx = torch::arange(cols, torch::kInt).div(gs, "floor").to(torch::kInt);
  } else {
    out.scales = scales;
    out.zeros = zeros.to(torch::kChar);
    // Input j was taken at position k = inverse[j]: its group is k / gs.
    const auto position = options.act_order() ? perm.argsort() : torch::arange(cols, torch::kLong);
    out.g_idx = position.div(gs, "floor").to(torch::kInt);
  }
  result.weight = Q.to(weight.scalar_type());
  return result;
}

AWQResult awq(const torch::Tensor& weight, const torch::Tensor& gram, const torch::Tensor& mean_abs,
              const QuantScheme& scheme, const AWQOptions& options) {
  using namespace weight_quantization_detail;
  check_weight(weight, scheme, "awq");
  const int64_t rows = weight.size(0), cols = weight.size(1), gs = group_size_of(scheme, cols);
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) == cols && gram.size(1) == cols,
              "awq: the inputs' Gram matrix should be [", cols, ", ", cols, "], got ",
              gram.sizes());
  TORCH_CHECK(mean_abs.dim() == 1 && mean_abs.size(0) == cols,
              "awq: the inputs' mean magnitudes should be [", cols, "], got ", mean_abs.sizes());
  TORCH_CHECK(options.grid() >= 1, "awq: grid should be >= 1, got ", options.grid());
  TORCH_CHECK(options.max_shrink() >= 0.0 && options.max_shrink() < 1.0,
              "awq: max_shrink should be in [0, 1), got ", options.max_shrink());
  torch::NoGradGuard no_grad;
  const auto W = weight.detach().to(torch::kCPU, torch::kFloat);
  const auto G = gram.detach().to(torch::kCPU, torch::kDouble);
  const auto m = mean_abs.detach().to(torch::kCPU, torch::kFloat);
  // tr(D G D^T), the output error of the weight change D [r, n] on inputs whose Gram is G, per row.
  const auto row_errors = [](const torch::Tensor& D, const torch::Tensor& g) {
    const auto d = D.to(torch::kDouble);
    return d.mm(g).mul(d).sum(1);
  };
  const auto fake_quantize = [&](const torch::Tensor& w, const QuantScheme& s) {
    return rtn_quantize(w, s).dequantize(torch::kFloat);
  };
  // The scale search (auto_scale.py): the first alpha with the lowest error wins.
  AWQResult result;
  double best = std::numeric_limits<double>::infinity();
  // alpha = 0 (no scaling, RTN) unless a grid point is better (also when every error is NaN).
  auto scales = torch::ones_like(m);
  for (int64_t i = 0; i < options.grid(); ++i) {
    const double ratio = static_cast<double>(i) / static_cast<double>(options.grid());
    auto s = m.pow(ratio).clamp_min(1e-4);
    s = s / (s.max() * s.min()).sqrt();
    const auto q = fake_quantize(W * s.unsqueeze(0), scheme) / s.unsqueeze(0);
    const double error = row_errors(q - W, G).sum().item<double>();
    if (error < best) {
      best = error;
      scales = s;
      result.ratio = ratio;
    }
  }
  auto Ws = W * scales.unsqueeze(0);
  if (options.clip()) {
    // The clipping search (auto_clip.py) on the scaled weight, whose inputs are x / s: per output
    // row and group, the shrink of max|w| with the lowest error of the group's partial output.
    const auto inv = (1.0 / scales.to(torch::kDouble));
    const auto Gs = G * inv.unsqueeze(1) * inv.unsqueeze(0);
    const auto per_row = QuantScheme(scheme).group_size(0);
    const auto steps =
        static_cast<int64_t>(options.max_shrink() * static_cast<double>(options.grid()));
    for (int64_t g = 0; g < cols / gs; ++g) {
      const auto w = Ws.narrow(1, g * gs, gs).clone();
      const auto Gg = Gs.narrow(0, g * gs, gs).narrow(1, g * gs, gs);
      const auto original = w.abs().amax(1, /*keepdim=*/true);
      auto best_max = original.clone();
      auto best_error =
          torch::full({rows}, std::numeric_limits<double>::infinity(), torch::kDouble);
      for (int64_t i = 0; i < std::max<int64_t>(steps, 1); ++i) {
        const auto max_val =
            original * (1.0 - static_cast<double>(i) / static_cast<double>(options.grid()));
        const auto clipped = torch::max(torch::min(w, max_val), -max_val);
        const auto error = row_errors(fake_quantize(clipped, per_row) - w, Gg);
        const auto better = error < best_error;
        best_error = torch::where(better, error, best_error);
        best_max = torch::where(better.unsqueeze(1), max_val, best_max);
      }
      Ws.narrow(1, g * gs, gs).copy_(torch::max(torch::min(w, best_max), -best_max));
    }
  }
  result.quantized = rtn_quantize(Ws, scheme);
  result.input_scales = scales;
  result.weight =
      (result.quantized.dequantize(torch::kFloat) / scales.unsqueeze(0)).to(weight.scalar_type());
  return result;
}

}  // namespace moeprune::compression
