#pragma once

// x [R, in] @ w [in, out] for a few rows and a bf16 / fp16 CPU weight in the expert bank's
// [in, out] layout: decoding reads every weight once per token, so this product is memory-bound,
// and torch's reduced-precision matrix-vector product in this orientation runs well below the
// memory bandwidth on CPUs without native bf16 (docs/performance.md). This kernel streams each
// weight row once, widens it to fp32 in registers and accumulates in fp32.
#include <torch/types.h>

#include <cstdint>

namespace moeprune::detail {

/// Rows small_rows_matmul takes in one pass over the weight (more: call it once per 8 rows).
constexpr int64_t kSmallRowsMax = 8;

/// Whether this CPU runs the kernel (x86-64 with AVX2, FMA and F16C); otherwise
/// small_rows_matmul falls back to torch's matrix-vector products.
bool has_small_rows_kernel();

/// x [R, in] (floating point, R <= kSmallRowsMax) @ w [in, out] (bf16 or fp16, contiguous, CPU)
/// -> [R, out] in w's dtype, summed in fp32 per fixed chunk of `in` and the chunks added in order
/// (the same result on any thread count). Not differentiable: call it without a graph.
torch::Tensor small_rows_matmul(const torch::Tensor& x, const torch::Tensor& w);

}  // namespace moeprune::detail
