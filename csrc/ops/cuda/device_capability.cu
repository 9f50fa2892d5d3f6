#include "ops/device_capability.h"

#include <ATen/cuda/CUDAContext.h>

namespace moeprune::detail {

int cuda_capability_major(const c10::Device& device) {
  if (!device.is_cuda()) {
    return -1;
  }
  // Cached by torch per device: no driver call after the first.
  return at::cuda::getDeviceProperties(device.has_index() ? device.index()
                                                          : at::cuda::current_device())
      ->major;
}

}  // namespace moeprune::detail
