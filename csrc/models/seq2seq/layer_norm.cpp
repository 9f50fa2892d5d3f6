#include <moeprune/models/seq2seq/layer_norm.h>

#include <torch/torch.h>

namespace moeprune::seq2seq {

T5LayerNormImpl::T5LayerNormImpl(int64_t size_, double eps_) : size(size_), eps(eps_) {
  reset();
}

void T5LayerNormImpl::reset() {
  TORCH_CHECK(size >= 1, "T5LayerNorm: size should be >= 1, got ", size);
  TORCH_CHECK(eps >= 0.0, "T5LayerNorm: eps should be >= 0, got ", eps);
  weight = register_parameter("weight", torch::ones({size}));
}

void T5LayerNormImpl::pretty_print(std::ostream& stream) const {
  stream << "moeprune::seq2seq::T5LayerNorm(" << size << ", eps=" << eps << ")";
}

torch::Tensor T5LayerNormImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.size(-1) == size, "T5LayerNorm: input width ", x.size(-1),
              " does not match the norm's size ", size);
  // SwitchTransformersLayerNorm: variance in fp32, x * rsqrt(variance + eps) (promoted to fp32),
  // cast to the weight's dtype when it is half precision.
  const auto variance = x.to(torch::kFloat).pow(2).mean(-1, /*keepdim=*/true);
  auto normalised = x * torch::rsqrt(variance + eps);
  if (weight.scalar_type() == torch::kHalf || weight.scalar_type() == torch::kBFloat16) {
    normalised = normalised.to(weight.scalar_type());
  }
  return weight * normalised;
}

}  // namespace moeprune::seq2seq
