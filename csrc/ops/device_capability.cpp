#include "ops/device_capability.h"

#ifndef MOEPRUNE_WITH_CUDA
namespace moeprune::detail {

int cuda_capability_major(const c10::Device& /*device*/) {
  return -1;
}

}  // namespace moeprune::detail
#endif
