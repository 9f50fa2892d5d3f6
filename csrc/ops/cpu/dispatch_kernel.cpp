#include "ops/cpu/index_checks.h"
#include "ops/cpu/row_kernels.h"

#include <ATen/Dispatch.h>
#include <torch/library.h>
#include <torch/types.h>

namespace moeprune::cpu {
namespace {

torch::Tensor dispatch_kernel(const torch::Tensor& input, const torch::Tensor& slot_row,
                              const torch::Tensor& row_slot) {
  check_routing_indices(slot_row, row_slot, "dispatch");
  check_cpu(input, "dispatch", "input");
  check_tokens(input, slot_row, "dispatch", "input");
  const auto in = input.contiguous();
  const auto slots = row_slot.contiguous();
  const int64_t T = in.size(0), d = in.size(1), K = slot_row.size(1), R = slots.size(0);
  auto out = torch::empty({R, d}, in.options());
  if (R == 0 || d == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      torch::kHalf, torch::kBFloat16, in.scalar_type(), "dispatch", [&] {
        gather_rows<scalar_t>(in.const_data_ptr<scalar_t>(), nullptr,
                              slots.const_data_ptr<int64_t>(), R, K, T * K, d,
                              out.data_ptr<scalar_t>(), "dispatch");
      });
  return out;
}

torch::Tensor dispatch_backward_kernel(const torch::Tensor& grad_rows,
                                       const torch::Tensor& slot_row,
                                       const torch::Tensor& row_slot) {
  check_routing_indices(slot_row, row_slot, "dispatch backward");
  check_cpu(grad_rows, "dispatch backward", "grad_rows");
  check_rows(grad_rows, row_slot, "dispatch backward", "grad_rows");
  const auto grad = grad_rows.contiguous();
  const auto rows_of = slot_row.contiguous();
  const int64_t T = rows_of.size(0), K = rows_of.size(1), R = grad.size(0), d = grad.size(1);
  auto out = torch::empty({T, d}, grad.options());
  if (T == 0 || d == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      torch::kHalf, torch::kBFloat16, grad.scalar_type(), "dispatch_backward", [&] {
        sum_slot_rows<scalar_t>(grad.const_data_ptr<scalar_t>(), nullptr,
                                rows_of.const_data_ptr<int64_t>(), T, K, R, d,
                                out.data_ptr<scalar_t>(), "dispatch backward");
      });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(moeprune, CPU, m) {
  m.impl("dispatch", &dispatch_kernel);
  m.impl("_dispatch_backward", &dispatch_backward_kernel);
}

}  // namespace moeprune::cpu
