// Op schemas and the public wrappers. Kernels live in csrc/ops/cpu (and csrc/ops/cuda), autograd
// in csrc/ops/autograd, each registered for its dispatch key.
#include <moeprune/ops/ops.h>

#include "ops/op_handles.h"

#include <torch/library.h>

namespace moeprune::ops {

TORCH_LIBRARY(moeprune, m) {
  m.def("dispatch(Tensor input, Tensor slot_row, Tensor row_slot) -> Tensor");
  m.def("combine(Tensor expert_output, Tensor weight, Tensor slot_row, Tensor row_slot) -> Tensor");
  // Backward ops, called by the autograd kernels, so backward runs on whatever device ran forward.
  // dispatch's backward sums each token's rows (a combine with unit weights).
  m.def("_dispatch_backward(Tensor grad_rows, Tensor slot_row, Tensor row_slot) -> Tensor");
  // combine's backward: rows of grad_output scaled by the slot weight, and the weight gradient
  // <expert_output[slot_row[t, j]], grad_output[t]>.
  m.def(
      "_combine_backward(Tensor grad_output, Tensor expert_output, Tensor weight, Tensor slot_row, "
      "Tensor row_slot) -> (Tensor, Tensor)");
}

torch::Tensor dispatch(const torch::Tensor& input, const torch::Tensor& slot_row,
                       const torch::Tensor& row_slot) {
  return detail::dispatch_op().call(input, slot_row, row_slot);
}

torch::Tensor combine(const torch::Tensor& expert_output, const torch::Tensor& weight,
                      const torch::Tensor& slot_row, const torch::Tensor& row_slot) {
  return detail::combine_op().call(expert_output, weight, slot_row, row_slot);
}

torch::Tensor dispatch(const torch::Tensor& input, const RoutingPlan& plan) {
  return dispatch(input, plan.slot_row, plan.row_slot);
}

torch::Tensor combine(const torch::Tensor& expert_output, const torch::Tensor& weight,
                      const RoutingPlan& plan) {
  return combine(expert_output, weight, plan.slot_row, plan.row_slot);
}

}  // namespace moeprune::ops
