#include "ops/cuda/cuda_checks.h"
#include "ops/cuda/row_kernels.cuh"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

namespace moeprune::cuda {
namespace {

torch::Tensor combine_kernel(const torch::Tensor& expert_output, const torch::Tensor& weight,
                             const torch::Tensor& slot_row, const torch::Tensor& row_slot) {
  cpu::check_routing_indices(slot_row, row_slot, "combine");
  cpu::check_rows(expert_output, row_slot, "combine", "expert_output");
  cpu::check_weight(weight, slot_row, expert_output, "combine");
  check_cuda(expert_output, expert_output, "combine", "expert_output");
  check_cuda(weight, expert_output, "combine", "weight");
  check_cuda(slot_row, expert_output, "combine", "slot_row");
  const c10::cuda::CUDAGuard guard(expert_output.device());
  const auto rows = expert_output.contiguous();
  const auto w = weight.contiguous();
  const auto rows_of = slot_row.contiguous();
  const int64_t T = rows_of.size(0), K = rows_of.size(1), R = rows.size(0), d = rows.size(1);
  auto out = torch::empty({T, d}, rows.options());
  if (T == 0 || d == 0) {
    return out;
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      torch::kHalf, torch::kBFloat16, rows.scalar_type(), "combine", [&] {
        sum_slot_rows_kernel<scalar_t><<<blocks_for(T, "combine"), kThreads, 0, stream>>>(
            rows.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
            rows_of.const_data_ptr<int64_t>(), K, R, d, out.data_ptr<scalar_t>());
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<torch::Tensor, torch::Tensor> combine_backward_kernel(const torch::Tensor& grad_output,
                                                                 const torch::Tensor& expert_output,
                                                                 const torch::Tensor& weight,
                                                                 const torch::Tensor& slot_row,
                                                                 const torch::Tensor& row_slot) {
  cpu::check_routing_indices(slot_row, row_slot, "combine backward");
  cpu::check_tokens(grad_output, slot_row, "combine backward", "grad_output");
  cpu::check_rows(expert_output, row_slot, "combine backward", "expert_output");
  cpu::check_weight(weight, slot_row, expert_output, "combine backward");
  check_cuda(expert_output, expert_output, "combine backward", "expert_output");
  check_cuda(grad_output, expert_output, "combine backward", "grad_output");
  check_cuda(weight, expert_output, "combine backward", "weight");
  const c10::cuda::CUDAGuard guard(expert_output.device());
  const auto grad = grad_output.to(expert_output.scalar_type()).contiguous();
  const auto rows = expert_output.contiguous();
  const auto w = weight.contiguous();
  const auto rows_of = slot_row.contiguous();
  const auto slots = row_slot.contiguous();
  const int64_t T = rows_of.size(0), K = rows_of.size(1), R = rows.size(0), d = rows.size(1);
  auto grad_rows = torch::empty({R, d}, rows.options());
  auto grad_weight = torch::empty({T, K}, w.options());
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      torch::kHalf, torch::kBFloat16, rows.scalar_type(), "combine_backward", [&] {
        if (R > 0 && d > 0) {
          scaled_gather_rows_kernel<scalar_t>
              <<<blocks_for(R, "combine backward"), kThreads, 0, stream>>>(
                  grad.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                  slots.const_data_ptr<int64_t>(), K, T * K, d, grad_rows.data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (T > 0 && K > 0) {
          slot_dots_kernel<scalar_t><<<blocks_for(T, "combine backward"), kThreads, 0, stream>>>(
              rows.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
              rows_of.const_data_ptr<int64_t>(), K, R, d, grad_weight.data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
  return {grad_rows, grad_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(moeprune, CUDA, m) {
  m.impl("combine", &combine_kernel);
  m.impl("_combine_backward", &combine_backward_kernel);
}

}  // namespace moeprune::cuda
