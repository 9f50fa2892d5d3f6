#include <moeprune/models/lm/rotary.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace moeprune::lm {

double yarn_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

double yarn_attention_factor(const YarnScaling& yarn) {
  if (yarn.attention_factor() > 0.0) {
    return yarn.attention_factor();
  }
  if (yarn.mscale() != 0.0 && yarn.mscale_all_dim() != 0.0) {
    return yarn_mscale(yarn.factor(), yarn.mscale()) /
           yarn_mscale(yarn.factor(), yarn.mscale_all_dim());
  }
  return yarn_mscale(yarn.factor(), 1.0);
}

torch::Tensor rotary_inverse_frequencies(const AttentionOptions& a) {
  const int64_t dim = a.rotary_width();
  TORCH_CHECK(dim >= 2 && dim % 2 == 0,
              "rotary embedding: the rotary width should be even and >= 2, got ", dim);
  TORCH_CHECK(a.rope_theta() > 0.0, "rotary embedding: rope_theta should be > 0, got ",
              a.rope_theta());
  const double base = a.rope_theta();
  // theta^(arange(0, d, 2) / d) in fp32, as modeling_rope_utils computes it.
  const auto pos_freqs = torch::pow(
      base, torch::arange(0, dim, 2, torch::kLong).to(torch::kFloat) / static_cast<double>(dim));
  if (!a.yarn()) {
    return 1.0 / pos_freqs;
  }
  const auto& y = *a.yarn();
  TORCH_CHECK(y.factor() > 0.0, "YaRN: factor should be > 0, got ", y.factor());
  TORCH_CHECK(y.original_max_position_embeddings() >= 1,
              "YaRN: original_max_position_embeddings should be >= 1, got ",
              y.original_max_position_embeddings());
  // The dimension whose wavelength turns `rotations` times over the original context
  // (_compute_yarn_parameters.find_correction_dim), in double as Python computes it.
  const auto correction_dim = [&](double rotations) {
    return static_cast<double>(dim) *
           std::log(static_cast<double>(y.original_max_position_embeddings()) /
                    (rotations * 2.0 * M_PI)) /
           (2.0 * std::log(base));
  };
  double low = correction_dim(y.beta_fast()), high = correction_dim(y.beta_slow());
  if (y.truncate()) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) {
    high += 0.001;  // as transformers: no division by zero
  }
  const auto ramp = ((torch::arange(dim / 2, torch::kFloat) - low) / (high - low)).clamp(0.0, 1.0);
  const auto extrapolation = 1.0 / pos_freqs;
  const auto interpolation = 1.0 / (y.factor() * pos_freqs);
  const auto keep = 1.0 - ramp;  // inv_freq_extrapolation_factor
  return interpolation * (1.0 - keep) + extrapolation * keep;
}

RotaryAngles rotary_angles(const AttentionOptions& a, int64_t start, int64_t length,
                           torch::ScalarType dtype, const torch::Device& device) {
  const auto inv_freq = rotary_inverse_frequencies(a);
  const auto positions = torch::arange(start, start + length, torch::kLong).to(torch::kFloat);
  const auto freqs = positions.unsqueeze(1) * inv_freq.unsqueeze(0);
  const auto angles = torch::cat({freqs, freqs}, -1);
  auto cos = angles.cos(), sin = angles.sin();
  if (a.yarn()) {
    const double factor = yarn_attention_factor(*a.yarn());
    cos = cos * factor;
    sin = sin * factor;
  }
  const auto type = a.rotary_in_fp32() ? torch::kFloat : dtype;
  return {cos.to(device, type), sin.to(device, type)};
}

torch::Tensor apply_rotary(const torch::Tensor& x, const RotaryAngles& angles, bool interleaved) {
  const int64_t d = x.size(-1), half = d / 2;
  TORCH_CHECK(angles.cos.size(-1) == d, "rotary embedding: angles for ", angles.cos.size(-1),
              " features, the input has ", d);
  if (angles.cos.scalar_type() != x.scalar_type()) {  // rotary_in_fp32
    return apply_rotary(x.to(angles.cos.scalar_type()), angles, interleaved).to(x.scalar_type());
  }
  auto y = x;
  if (interleaved) {  // (x0, x1, x2, x3, ...) -> (x0, x2, ..., x1, x3, ...)
    y = x.unflatten(-1, {half, 2}).transpose(-1, -2).reshape(x.sizes());
  }
  const auto rotated = torch::cat({-y.narrow(-1, half, half), y.narrow(-1, 0, half)}, -1);
  return y * angles.cos + rotated * angles.sin;
}

}  // namespace moeprune::lm
