// Autograd for moeprune::dispatch: the gradient of a gather is the per-token sum of its rows.
#include "ops/op_handles.h"

#include <torch/autograd.h>
#include <torch/library.h>

namespace moeprune::autograd {
namespace {

class DispatchFunction : public torch::autograd::Function<DispatchFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input,
                               const torch::Tensor& slot_row, const torch::Tensor& row_slot) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({slot_row, row_slot});
    return detail::dispatch_op().call(input, slot_row, row_slot);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grads) {
    const auto saved = ctx->get_saved_variables();
    return {detail::dispatch_backward_op().call(grads[0], saved[0], saved[1]), torch::Tensor(),
            torch::Tensor()};
  }
};

torch::Tensor dispatch_autograd(const torch::Tensor& input, const torch::Tensor& slot_row,
                                const torch::Tensor& row_slot) {
  return DispatchFunction::apply(input, slot_row, row_slot);
}

}  // namespace

TORCH_LIBRARY_IMPL(moeprune, Autograd, m) {
  m.impl("dispatch", &dispatch_autograd);
}

}  // namespace moeprune::autograd
