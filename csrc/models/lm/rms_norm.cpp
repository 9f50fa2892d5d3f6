#include <moeprune/models/lm/rms_norm.h>

#include <torch/torch.h>

namespace moeprune::lm {

RMSNormImpl::RMSNormImpl(RMSNormOptions options_) : options(options_) {
  reset();
}

void RMSNormImpl::reset() {
  TORCH_CHECK(options.size() >= 1, "RMSNorm: size should be >= 1, got ", options.size());
  TORCH_CHECK(options.eps() >= 0.0, "RMSNorm: eps should be >= 0, got ", options.eps());
  weight = register_parameter("weight", torch::ones({options.size()}));
}

void RMSNormImpl::pretty_print(std::ostream& stream) const {
  stream << "moeprune::lm::RMSNorm(" << options.size() << ", eps=" << options.eps() << ")";
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.size(-1) == options.size(), "RMSNorm: input width ", x.size(-1),
              " does not match the norm's size ", options.size());
  // LlamaRMSNorm (modeling_llama.py): variance in fp32, weight * normalised.to(input dtype).
  const auto h = x.to(torch::kFloat);
  const auto normalised = h * torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + options.eps());
  return weight * normalised.to(x.scalar_type());
}

}  // namespace moeprune::lm
