#pragma once

// Weight-only quantisation of a model's experts (and, with targets, its dense layers) through its
// MoE view, in memory (the Unified seed's Expert Slimming, second part; METHODS.md section 10):
// each linear is quantised with RTN or GPTQ (weight_quantization.h) and its weight replaced by
// the dequantised values, so the model runs and is evaluated as the quantised one would compute.
// Calibration is the sparsity driver's: each expert on the tokens routed to it (or all tokens,
// router-weighted or not, the min_tokens fallback), each dense layer on its own inputs, block by
// block, sequential or not (model_sparsity.h).
#include <moeprune/compression/model_sparsity.h>
#include <moeprune/compression/weight_quantization.h>

#include <torch/arg.h>

#include <string>

namespace moeprune::compression {

enum class QuantMethod {
  kRTN,   ///< round to nearest: no calibration
  kGPTQ,  ///< GPTQ on each linear's calibration inputs
  /// AWQ on each linear's calibration inputs: its own input scales (llm-awq shares one scale
  /// between the linears reading the same input and searches it on their block's output; see
  /// docs/compression.md), stored as the weight it computes with (the scales not folded).
  kAWQ,
};
/// "rtn", "gptq" or "awq"; an error lists them.
QuantMethod parse_quant_method(const std::string& name);
std::string to_string(QuantMethod method);

struct QuantizeOptions {
  TORCH_ARG(QuantMethod, method) = QuantMethod::kGPTQ;
  TORCH_ARG(QuantScheme, scheme);
  TORCH_ARG(GPTQOptions, gptq);
  TORCH_ARG(AWQOptions, awq);
  /// Calibration and what is quantised: the sparsity options' calibration, router_weighted,
  /// min_tokens, sequential, layers and targets (their method and pattern are not used).
  TORCH_ARG(ExpertSparsityOptions, calibration);
};

/// Quantises what options.calibration().targets() names, in place (each weight becomes its
/// dequantised value in its own dtype). The reports' relative error is the output error on the
/// calibration inputs, as for sparsity (NaN for RTN without calibration data); their zeros count
/// the codes that dequantise to 0. Refuses GPTQ and AWQ without calibration data and a scheme whose
/// groups do not divide a layer's inputs (naming it).
SparsityReport quantize(const MoEView& view, const QuantizeOptions& options,
                        const LayerSparsityCallback& on_layer = {},
                        const LinearSparsityCallback& on_linears = {});

}  // namespace moeprune::compression
