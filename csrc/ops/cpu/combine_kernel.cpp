#include "ops/cpu/index_checks.h"
#include "ops/cpu/row_kernels.h"

#include <ATen/Dispatch.h>
#include <torch/library.h>
#include <torch/types.h>

#include <tuple>

namespace moeprune::cpu {
namespace {

torch::Tensor combine_kernel(const torch::Tensor& expert_output, const torch::Tensor& weight,
                             const torch::Tensor& slot_row, const torch::Tensor& row_slot) {
  check_routing_indices(slot_row, row_slot, "combine");
  check_cpu(expert_output, "combine", "expert_output");
  check_cpu(weight, "combine", "weight");
  check_rows(expert_output, row_slot, "combine", "expert_output");
  check_weight(weight, slot_row, expert_output, "combine");
  const auto rows = expert_output.contiguous();
  const auto w = weight.contiguous();
  const auto rows_of = slot_row.contiguous();
  const int64_t T = rows_of.size(0), K = rows_of.size(1), R = rows.size(0), d = rows.size(1);
  auto out = torch::empty({T, d}, rows.options());
  if (T == 0 || d == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      torch::kHalf, torch::kBFloat16, rows.scalar_type(), "combine", [&] {
        sum_slot_rows<scalar_t>(rows.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                rows_of.const_data_ptr<int64_t>(), T, K, R, d,
                                out.data_ptr<scalar_t>(), "combine");
      });
  return out;
}

std::tuple<torch::Tensor, torch::Tensor> combine_backward_kernel(const torch::Tensor& grad_output,
                                                                 const torch::Tensor& expert_output,
                                                                 const torch::Tensor& weight,
                                                                 const torch::Tensor& slot_row,
                                                                 const torch::Tensor& row_slot) {
  check_routing_indices(slot_row, row_slot, "combine backward");
  check_cpu(grad_output, "combine backward", "grad_output");
  check_cpu(expert_output, "combine backward", "expert_output");
  check_tokens(grad_output, slot_row, "combine backward", "grad_output");
  check_rows(expert_output, row_slot, "combine backward", "expert_output");
  check_weight(weight, slot_row, expert_output, "combine backward");
  TORCH_CHECK(grad_output.size(1) == expert_output.size(1),
              "combine backward: grad_output has width ", grad_output.size(1),
              " but expert_output has width ", expert_output.size(1));
  const auto grad = grad_output.to(expert_output.scalar_type()).contiguous();
  const auto rows = expert_output.contiguous();
  const auto w = weight.contiguous();
  const auto rows_of = slot_row.contiguous();
  const auto slots = row_slot.contiguous();
  const int64_t T = rows_of.size(0), K = rows_of.size(1), R = rows.size(0), d = rows.size(1);
  auto grad_rows = torch::empty({R, d}, rows.options());
  auto grad_weight = torch::empty({T, K}, w.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      torch::kHalf, torch::kBFloat16, rows.scalar_type(), "combine_backward", [&] {
        if (R > 0 && d > 0) {
          gather_rows<scalar_t>(grad.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                slots.const_data_ptr<int64_t>(), R, K, T * K, d,
                                grad_rows.data_ptr<scalar_t>(), "combine backward");
        }
        if (T > 0 && K > 0) {
          slot_dots<scalar_t>(rows.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
                              rows_of.const_data_ptr<int64_t>(), T, K, R, d,
                              grad_weight.data_ptr<scalar_t>(), "combine backward");
        }
      });
  return {grad_rows, grad_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(moeprune, CPU, m) {
  m.impl("combine", &combine_kernel);
  m.impl("_combine_backward", &combine_backward_kernel);
}

}  // namespace moeprune::cpu
