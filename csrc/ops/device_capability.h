#pragma once

// The compute capability of a CUDA device, for choices made once per device (the grouped-GEMM
// path of the expert bank). Defined in csrc/ops/cuda/device_capability.cu when the CUDA kernels
// are built, else in csrc/ops/device_capability.cpp (no CUDA: -1).
#include <c10/core/Device.h>

namespace moeprune::detail {

/// The major compute capability of `device` (9 for an H100/H200), or -1 when it is not a CUDA
/// device or the library was built without CUDA.
int cuda_capability_major(const c10::Device& device);

}  // namespace moeprune::detail
