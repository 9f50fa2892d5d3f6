// Autograd for moeprune::dispatch: the gradient of a gather is the per-token sum of its rows.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace moeprune::autograd {
namespace {

torch::Tensor call_dispatch(const torch::Tensor& input, const torch::Tensor& slot_row,
                            const torch::Tensor& row_slot) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("moeprune::dispatch", "")
          .typed<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&)>();
  return op.call(input, slot_row, row_slot);
}

torch::Tensor call_dispatch_backward(const torch::Tensor& grad_rows, const torch::Tensor& slot_row,
                                     const torch::Tensor& row_slot) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("moeprune::_dispatch_backward", "")
          .typed<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&)>();
  return op.call(grad_rows, slot_row, row_slot);
}

class DispatchFunction : public torch::autograd::Function<DispatchFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input,
                               const torch::Tensor& slot_row, const torch::Tensor& row_slot) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({slot_row, row_slot});
    return call_dispatch(input, slot_row, row_slot);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grads) {
    const auto saved = ctx->get_saved_variables();
    return {call_dispatch_backward(grads[0], saved[0], saved[1]), torch::Tensor(), torch::Tensor()};
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
