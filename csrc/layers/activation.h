#pragma once

// The expert activations, applied elementwise: shared by the expert bank and the language
// models' dense MLPs and shared experts (models/lm/feed_forward.cpp).
#include <moeprune/layers/expert_bank.h>

#include <torch/torch.h>

namespace moeprune::detail {

inline torch::Tensor activate(const torch::Tensor& x, ExpertActivation activation) {
  switch (activation) {
    case ExpertActivation::kGelu:
      return torch::gelu(x);
    case ExpertActivation::kGeluTanh:
      return torch::gelu(x, "tanh");
    case ExpertActivation::kRelu:
      return torch::relu(x);
    case ExpertActivation::kSilu:
      return torch::silu(x);
  }
  TORCH_CHECK(false, "unknown expert activation");
}

}  // namespace moeprune::detail
