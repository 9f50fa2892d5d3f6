#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include <cstdint>

namespace moeprune::lm {

struct RMSNormOptions {
  RMSNormOptions(int64_t size) : size_(size) {}  // NOLINT(google-explicit-constructor)
  TORCH_ARG(int64_t, size);
  TORCH_ARG(double, eps) = 1e-6;
};

/// Root-mean-square layer norm as the Llama family computes it (LlamaRMSNorm): statistics in
/// fp32, the normalised input cast back to its dtype, then scaled by the weight.
class RMSNormImpl : public torch::nn::Cloneable<RMSNormImpl> {
 public:
  explicit RMSNormImpl(RMSNormOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& x);

  RMSNormOptions options;
  torch::Tensor weight;
};
TORCH_MODULE(RMSNorm);

}  // namespace moeprune::lm
