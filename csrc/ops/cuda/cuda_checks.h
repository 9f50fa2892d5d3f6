#pragma once

// Input checks shared by the CUDA kernels of dispatch and combine (the shape checks are the
// CPU kernels').
#include "ops/cpu/index_checks.h"

namespace moeprune::cuda {

inline void check_cuda(const torch::Tensor& t, const torch::Tensor& like, const char* op,
                       const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " should be a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(),
              " but the other inputs are on ", like.device());
}

// Grid size for one block per row, refusing counts CUDA cannot launch.
inline unsigned int blocks_for(int64_t rows, const char* op) {
  TORCH_CHECK(rows <= 2147483647LL, op, ": ", rows, " rows exceed one CUDA grid");
  return static_cast<unsigned int>(rows);
}

}  // namespace moeprune::cuda
