#include "ops/cuda/cuda_checks.h"
#include "ops/cuda/row_kernels.cuh"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

namespace moeprune::cuda {
namespace {

torch::Tensor dispatch_kernel(const torch::Tensor& input, const torch::Tensor& slot_row,
                              const torch::Tensor& row_slot) {
  cpu::check_routing_indices(slot_row, row_slot, "dispatch");
  cpu::check_tokens(input, slot_row, "dispatch", "input");
  check_cuda(input, input, "dispatch", "input");
  check_cuda(row_slot, input, "dispatch", "row_slot");
  const c10::cuda::CUDAGuard guard(input.device());
  const auto in = input.contiguous();
  const auto slots = row_slot.contiguous();
  const int64_t T = in.size(0), d = in.size(1), K = slot_row.size(1), R = slots.size(0);
  auto out = torch::empty({R, d}, in.options());
  if (R == 0 || d == 0) {
    return out;
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t row_bytes = d * in.element_size();
  const bool vectorised = row_bytes % 16 == 0 &&
                          reinterpret_cast<uintptr_t>(in.data_ptr()) % 16 == 0 &&
                          reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 == 0;
  // A row copy moves bytes: 16-byte vectors where rows allow it, else elements.
  if (vectorised) {
    gather_rows_kernel<uint4><<<blocks_for(R, "dispatch"), kThreads, 0, stream>>>(
        static_cast<const uint4*>(in.const_data_ptr()), slots.const_data_ptr<int64_t>(), K, T * K,
        row_bytes / 16, static_cast<uint4*>(out.data_ptr()));
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        torch::kHalf, torch::kBFloat16, in.scalar_type(), "dispatch", [&] {
          gather_rows_kernel<scalar_t><<<blocks_for(R, "dispatch"), kThreads, 0, stream>>>(
              in.const_data_ptr<scalar_t>(), slots.const_data_ptr<int64_t>(), K, T * K, d,
              out.data_ptr<scalar_t>());
        });
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

torch::Tensor dispatch_backward_kernel(const torch::Tensor& grad_rows,
                                       const torch::Tensor& slot_row,
                                       const torch::Tensor& row_slot) {
  cpu::check_routing_indices(slot_row, row_slot, "dispatch backward");
  cpu::check_rows(grad_rows, row_slot, "dispatch backward", "grad_rows");
  check_cuda(grad_rows, grad_rows, "dispatch backward", "grad_rows");
  check_cuda(slot_row, grad_rows, "dispatch backward", "slot_row");
  const c10::cuda::CUDAGuard guard(grad_rows.device());
  const auto grad = grad_rows.contiguous();
  const auto rows_of = slot_row.contiguous();
  const int64_t T = rows_of.size(0), K = rows_of.size(1), R = grad.size(0), d = grad.size(1);
  auto out = torch::empty({T, d}, grad.options());
  if (T == 0 || d == 0) {
    return out;
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      torch::kHalf, torch::kBFloat16, grad.scalar_type(), "dispatch_backward", [&] {
        sum_slot_rows_kernel<scalar_t><<<blocks_for(T, "dispatch backward"), kThreads, 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), nullptr, rows_of.const_data_ptr<int64_t>(), K, R, d,
            out.data_ptr<scalar_t>());
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(moeprune, CUDA, m) {
  m.impl("dispatch", &dispatch_kernel);
  m.impl("_dispatch_backward", &dispatch_backward_kernel);
}

}  // namespace moeprune::cuda
