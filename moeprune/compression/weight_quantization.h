#pragma once

// Weight-only quantisation of one linear layer (the Unified seed's "Expert Slimming", second
// part; METHODS.md section 10): W [out, in] as integer codes q in [-2^(b-1), 2^(b-1) - 1] with a
// scale s and zero point z per output row and group of `group_size` consecutive inputs, W ~
// s (q - z).
// - Group parameters as compressed-tensors' calculate_qparams and GPTQ's Quantizer.find_params
//   compute them (the range always holds 0): symmetric s = max|w| / ((2^b - 1) / 2), z = 0;
//   asymmetric s = (max - min) / (2^b - 1), z = round(-2^(b-1) - min / s) clamped to the code
//   range. (METHODS.md's symmetric s = max|w| / (2^(b-1) - 1) is the restricted-range variant;
//   this one is what the formats moeprune writes expect.) q = clamp(round(w / s) + z).
// - RTN: every group from the weight as it is.
// - GPTQ (Frantar et al. 2022, IST-DASLab/gptq gptq.py fasterquant): column by column, each
//   column's rounding error is spread over the columns after it through the upper Cholesky
//   factor of the inverse damped Hessian (H = X^T X + lambda I), in lazy blocks; a group's
//   parameters are computed when its first column comes, from the weights updated so far;
//   act-order takes the columns by decreasing H_jj (static groups: parameters from the original
//   weights, by original column) and records each input's group in g_idx.
// - AWQ (Lin et al. 2023, mit-han-lab/llm-awq auto_scale.py / auto_clip.py): input channel j is
//   scaled by s_j = m_j^alpha / sqrt(max m^alpha min m^alpha), m_j the mean |x_j| over the
//   calibration tokens, alpha the grid point i / n (i < n) whose RTN of W diag(s), applied to
//   x / s, gives the lowest output error; then each output row's group of W diag(s) is clipped to
//   the range (1 - i / n) max|w| (i < max_shrink n) with the lowest error of its partial output.
//   The quantised weight stands for W diag(s); what it computes on x is Q diag(1/s) x.
#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>
#include <string>

namespace moeprune::compression {

struct QuantScheme {
  int64_t qmin() const { return -(int64_t{1} << (bits() - 1)); }
  int64_t qmax() const { return (int64_t{1} << (bits() - 1)) - 1; }
  /// "W4 g128 symmetric"
  std::string describe() const;

  /// Bits per code: 2, 3, 4 or 8.
  TORCH_ARG(int64_t, bits) = 4;
  /// Inputs per group; 0: one group per output row (per channel).
  TORCH_ARG(int64_t, group_size) = 128;
  TORCH_ARG(bool, symmetric) = true;
  /// The dtype the scales are stored in: each group's scale is rounded to it before its zero
  /// point and codes are computed, so the stored scales reproduce the codes' weights exactly
  /// (compressed-tensors and GPTQ files store them in the model's dtype, fp16 or bf16).
  TORCH_ARG(torch::Dtype, scale_dtype) = torch::kFloat;
};

/// Refuses an unsupported scheme, or one whose groups do not divide `in_features` inputs.
void check_quant_scheme(const QuantScheme& scheme, int64_t in_features);

/// A quantised weight [out, in].
struct QuantizedWeight {
  torch::Tensor codes;   ///< [out, in] int8, in [qmin, qmax]
  torch::Tensor scales;  ///< [out, groups] fp32 (values of the scheme's scale_dtype)
  torch::Tensor zeros;   ///< [out, groups] int8 (all 0 when symmetric)
  torch::Tensor g_idx;   ///< [in] int32: each input's group (j / group_size without act-order)
  /// s[r, g_idx[j]] * (q[r, j] - z[r, g_idx[j]]), in `dtype`.
  torch::Tensor dequantize(torch::Dtype dtype = torch::kFloat) const;
};

/// The scale and zero point [rows] of each row of `w` [rows, n] (one group per row).
std::pair<torch::Tensor, torch::Tensor> quant_params(const torch::Tensor& w,
                                                     const QuantScheme& scheme);

/// Round to nearest, every group from `weight` [out, in] as it is.
QuantizedWeight rtn_quantize(const torch::Tensor& weight, const QuantScheme& scheme);

struct GPTQOptions {
  /// lambda = percdamp * mean(diag(H)) added to H's diagonal (the reference's default).
  TORCH_ARG(double, percdamp) = 0.01;
  /// Columns per lazy block (raised to the group size when groups are larger; a multiple of the
  /// group size otherwise, so no group spans two blocks).
  TORCH_ARG(int64_t, block_size) = 128;
  /// Columns in order of decreasing H_jj (the reference's --act-order).
  TORCH_ARG(bool, act_order) = false;
  /// With act_order: each group's parameters from the original weights, by original column
  /// (GPTQModel's static_groups), so g_idx stays j / group_size.
  TORCH_ARG(bool, static_groups) = false;
  /// The computation's dtype (the reference: fp32).
  TORCH_ARG(torch::Dtype, dtype) = torch::kFloat;
};

struct GPTQResult {
  QuantizedWeight quantized;
  /// The dequantised weight [out, in], in the weight's dtype.
  torch::Tensor weight;
  /// The reference's loss: sum over columns of (w - q)^2 / [Hinv]_jj^2, halved.
  double loss = 0.0;
};

/// GPTQ on weight [out, in] with its inputs' Gram matrix `gram` [in, in] (InputStatistics::gram;
/// its scale does not matter). Inputs no token reached (a zero diagonal) are zeroed first, as the
/// reference does. Refuses a Hessian that is not positive definite after damping.
GPTQResult gptq(const torch::Tensor& weight, const torch::Tensor& gram, const QuantScheme& scheme,
                const GPTQOptions& options = {});

struct AWQOptions {
  /// Scale exponents alpha = i / grid, i = 0..grid-1, and clipping steps of 1 / grid (llm-awq's
  /// n_grid).
  TORCH_ARG(int64_t, grid) = 20;
  /// The clipping search shrinks a group's range by at most this fraction (llm-awq: 0.5).
  TORCH_ARG(double, max_shrink) = 0.5;
  /// false: no clipping search (the scales alone).
  TORCH_ARG(bool, clip) = true;
};

struct AWQResult {
  /// The codes of the scaled, clipped weight W diag(s) and their group parameters.
  QuantizedWeight quantized;
  /// s [in] fp32: the input scales, folded into the previous operation when stored packed.
  torch::Tensor input_scales;
  /// What the quantised layer computes, as a weight: dequantize() diag(1/s), [out, in], in the
  /// weight's dtype.
  torch::Tensor weight;
  /// The chosen exponent alpha.
  double ratio = 0.0;
};

/// AWQ on weight [out, in] with its inputs' Gram matrix `gram` [in, in] (the output error of a
/// weight change D is tr(D G D^T): the loss on the calibration tokens without them) and their
/// mean |x| per input `mean_abs` [in] (InputStatistics::mean_abs).
AWQResult awq(const torch::Tensor& weight, const torch::Tensor& gram, const torch::Tensor& mean_abs,
              const QuantScheme& scheme, const AWQOptions& options = {});

}  // namespace moeprune::compression
