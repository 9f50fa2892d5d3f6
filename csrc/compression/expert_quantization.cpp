#include <moeprune/compression/expert_quantization.h>

#include "compression/pruned_linear.h"

#include <torch/torch.h>

#include <algorithm>
#include <string>

namespace moeprune::compression {

QuantMethod parse_quant_method(const std::string& name) {
  if (name == "rtn") return QuantMethod::kRTN;
  if (name == "gptq") return QuantMethod::kGPTQ;
  if (name == "awq") return QuantMethod::kAWQ;
  TORCH_CHECK(false, "unknown quantisation method '", name, "': rtn, gptq or awq");
}

std::string to_string(QuantMethod method) {
  switch (method) {
    case QuantMethod::kRTN:
      return "rtn";
    case QuantMethod::kGPTQ:
      return "gptq";
    case QuantMethod::kAWQ:
      return "awq";
  }
  TORCH_CHECK(false, "unknown quantisation method");
}

sparsity_detail::LinearTransform sparsity_detail::quantization_transform(
    const QuantizeOptions& options, QuantizedWeights* keep) {
  const auto method = options.method();
  const auto scheme = options.scheme();
  const auto gptq_options = options.gptq();
  const auto awq_options = options.awq();
  TORCH_CHECK(method != QuantMethod::kAWQ || keep == nullptr,
              "awq: its codes stand for W diag(s) and need the input scales folded into the "
              "previous operation to be stored; moeprune stores AWQ's result dequantised");
  return [method, scheme, gptq_options, awq_options, keep](const torch::Tensor& w,
                                                           const Calibration* c) -> torch::Tensor {
    QuantizedWeight quantized;
    torch::Tensor weight;
    if (method == QuantMethod::kGPTQ) {
      TORCH_CHECK(c != nullptr, "gptq needs calibration inputs");
      auto result = compression::gptq(w, c->stats.gram(), scheme, gptq_options);
      quantized = std::move(result.quantized);
      weight = std::move(result.weight);
    } else if (method == QuantMethod::kAWQ) {
      TORCH_CHECK(c != nullptr, "awq needs calibration inputs");
      auto result = compression::awq(w, c->stats.gram(), c->stats.mean_abs(), scheme, awq_options);
      quantized = std::move(result.quantized);
      weight = std::move(result.weight);
    } else {
      quantized = rtn_quantize(w, scheme);
      weight = quantized.dequantize(w.scalar_type());
    }
    if (keep != nullptr) (*keep)[w.data_ptr()] = std::move(quantized);
    return weight;
  };
}

ExpertSparsityOptions sparsity_detail::quantization_calibration(const QuantizeOptions& options) {
  auto calibration = options.calibration();
  // The sparsity checks of the calibration fields (the pattern is not used: any valid one).
  calibration.pattern(SparsityPattern::unstructured(0.5));
  check_sparsity_options(calibration);
  // Bits and group size alone (each layer's inputs are checked where it is quantised).
  check_quant_scheme(options.scheme(), std::max<int64_t>(options.scheme().group_size(), 1));
  // With calibration data, RTN is still measured (the error report) but not calibrated.
  if (options.method() == QuantMethod::kRTN) calibration.method(SparsityMethod::kMagnitude);
  return calibration;
}

SparsityReport quantize(const MoEView& view, const QuantizeOptions& options,
                        const LayerSparsityCallback& on_layer,
                        const LinearSparsityCallback& on_linears) {
  const auto calibration = sparsity_detail::quantization_calibration(options);
  // Every targeted layer's inputs in whole groups, checked before any work.
  const auto& scheme = options.scheme();
  const auto check_inputs = [&](int64_t in, const std::string& what) {
    TORCH_CHECK(scheme.group_size() == 0 || in % scheme.group_size() == 0, "quantize: ", what,
                " has ", in, " inputs, not a whole number of groups of ", scheme.group_size());
  };
  const auto& targets = calibration.targets();
  if (targets.experts) {
    for (const auto& entry : view.layers()) {
      const auto bank = entry.layer->experts();
      check_inputs(bank->w1.size(1), entry.name + "'s expert gate/up projections");
      check_inputs(bank->w2.size(1), entry.name + "'s expert down projections");
    }
  }
  if (targets.beyond_experts()) {
    for (const auto& entry : view.linears()) {
      if (targets.wants(entry.role)) check_inputs(entry.linear->weight.size(1), entry.name);
    }
  }
  TORCH_CHECK(options.method() == QuantMethod::kRTN || view.has_calibration(),
              "quantize: ", to_string(options.method()),
              " needs calibration data and the MoE view has none");
  return sparsity_detail::slim(view, calibration, sparsity_detail::quantization_transform(options),
                               on_layer, on_linears);
}

}  // namespace moeprune::compression
