// Autograd for moeprune::combine: gradients for the expert outputs (a weighted dispatch of the
// output gradient) and for the combine weights (one dot product per kept slot).
#include "ops/op_handles.h"

#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

namespace moeprune::autograd {
namespace {

class CombineFunction : public torch::autograd::Function<CombineFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx,
                               const torch::Tensor& expert_output, const torch::Tensor& weight,
                               const torch::Tensor& slot_row, const torch::Tensor& row_slot) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({expert_output, weight, slot_row, row_slot});
    return detail::combine_op().call(expert_output, weight, slot_row, row_slot);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grads) {
    const auto saved = ctx->get_saved_variables();
    auto [grad_rows, grad_weight] =
        detail::combine_backward_op().call(grads[0], saved[0], saved[1], saved[2], saved[3]);
    return {grad_rows, grad_weight, torch::Tensor(), torch::Tensor()};
  }
};

torch::Tensor combine_autograd(const torch::Tensor& expert_output, const torch::Tensor& weight,
                               const torch::Tensor& slot_row, const torch::Tensor& row_slot) {
  return CombineFunction::apply(expert_output, weight, slot_row, row_slot);
}

}  // namespace

TORCH_LIBRARY_IMPL(moeprune, Autograd, m) {
  m.impl("combine", &combine_autograd);
}

}  // namespace moeprune::autograd
