#pragma once

// T5's layer norm (transformers' SwitchTransformersLayerNorm): scales by the root mean square,
// no mean subtracted and no bias; the statistics in fp32, the result cast to the weight's dtype
// when that is fp16 or bf16.
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include <cstdint>

namespace moeprune::seq2seq {

class T5LayerNormImpl : public torch::nn::Cloneable<T5LayerNormImpl> {
 public:
  explicit T5LayerNormImpl(int64_t size, double eps = 1e-6);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& x);

  int64_t size;
  double eps;
  torch::Tensor weight;
};
TORCH_MODULE(T5LayerNorm);

}  // namespace moeprune::seq2seq
