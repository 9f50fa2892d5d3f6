#pragma once

// Device loops behind dispatch, combine and their backward passes on CUDA. One thread block
// owns an output row, so every output element has one writer and a fixed summation order:
// results are deterministic, without atomics. Indices are 64-bit; an out-of-range index trips a
// device-side assert (the host cannot check without a synchronisation). A row whose row_slot is
// -1 is padding (the fixed-size layout of routing.h) and is written as zeros.
#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include <cstdint>

namespace moeprune::cuda {

constexpr int kThreads = 256;

// out[r] = src[row_slot[r] / K] (a row copy), 16-byte vectors when `Vec` is wider than scalar_t.
template <typename Vec>
__global__ void gather_rows_kernel(const Vec* __restrict__ src,
                                   const int64_t* __restrict__ row_slot, int64_t K,
                                   int64_t num_slots, int64_t vecs_per_row, Vec* __restrict__ out) {
  const int64_t r = blockIdx.x;
  const int64_t s = row_slot[r];
  CUDA_KERNEL_ASSERT(s >= -1 && s < num_slots);
  Vec* dst = out + r * vecs_per_row;
  if (s == -1) {
    for (int64_t i = threadIdx.x; i < vecs_per_row; i += blockDim.x) {
      dst[i] = Vec{};
    }
    return;
  }
  const Vec* in = src + (s / K) * vecs_per_row;
  for (int64_t i = threadIdx.x; i < vecs_per_row; i += blockDim.x) {
    dst[i] = in[i];
  }
}

// out[r] = weight[row_slot[r]] * src[row_slot[r] / K]
template <typename scalar_t>
__global__ void scaled_gather_rows_kernel(const scalar_t* __restrict__ src,
                                          const scalar_t* __restrict__ weight,
                                          const int64_t* __restrict__ row_slot, int64_t K,
                                          int64_t num_slots, int64_t d,
                                          scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t r = blockIdx.x;
  const int64_t s = row_slot[r];
  CUDA_KERNEL_ASSERT(s >= -1 && s < num_slots);
  scalar_t* dst = out + r * d;
  if (s == -1) {
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      dst[i] = scalar_t(0);
    }
    return;
  }
  const acc_t w = static_cast<acc_t>(weight[s]);
  const scalar_t* in = src + (s / K) * d;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    dst[i] = static_cast<scalar_t>(w * static_cast<acc_t>(in[i]));
  }
}

// out[t] = sum_j (weight ? weight[t, j] : 1) * rows[slot_row[t, j]], j = 0..K-1 in order.
template <typename scalar_t>
__global__ void sum_slot_rows_kernel(const scalar_t* __restrict__ rows,
                                     const scalar_t* __restrict__ weight,
                                     const int64_t* __restrict__ slot_row, int64_t K, int64_t R,
                                     int64_t d, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t t = blockIdx.x;
  const int64_t* slots = slot_row + t * K;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    acc_t acc = 0;
    for (int64_t j = 0; j < K; ++j) {
      const int64_t r = slots[j];
      if (r < 0) {
        continue;
      }
      CUDA_KERNEL_ASSERT(r < R);
      const acc_t w = weight == nullptr ? acc_t(1) : static_cast<acc_t>(weight[t * K + j]);
      acc += w * static_cast<acc_t>(rows[r * d + i]);
    }
    out[t * d + i] = static_cast<scalar_t>(acc);
  }
}

// out[t, j] = <rows[slot_row[t, j]], tokens[t]>, 0 for a dropped slot: one block per token, a
// fixed-shape tree reduction per slot (deterministic for a given block size).
template <typename scalar_t>
__global__ void slot_dots_kernel(const scalar_t* __restrict__ rows,
                                 const scalar_t* __restrict__ tokens,
                                 const int64_t* __restrict__ slot_row, int64_t K, int64_t R,
                                 int64_t d, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kThreads];
  const int64_t t = blockIdx.x;
  for (int64_t j = 0; j < K; ++j) {
    const int64_t r = slot_row[t * K + j];
    acc_t acc = 0;
    if (r >= 0) {
      CUDA_KERNEL_ASSERT(r < R);
      for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
        acc += static_cast<acc_t>(rows[r * d + i]) * static_cast<acc_t>(tokens[t * d + i]);
      }
    }
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride /= 2) {
      if (static_cast<int>(threadIdx.x) < stride) {
        partial[threadIdx.x] += partial[threadIdx.x + stride];
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      out[t * K + j] = static_cast<scalar_t>(partial[0]);
    }
    __syncthreads();
  }
}

}  // namespace moeprune::cuda
