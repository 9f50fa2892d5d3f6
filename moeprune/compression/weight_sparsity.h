#pragma once

// Sparsity inside one linear layer (the Unified seed's "Expert Slimming"; METHODS.md section 10):
// which weights of W [out, in] go, chosen from W and the calibration inputs X [tokens, in] that
// reach the layer.
// - magnitude: the smallest |W_ij| of each output row;
// - Wanda (Sun et al. 2023, locuslab/wanda lib/prune.py): the smallest |W_ij| * ||X_j||_2 of each
//   output row, the kept weights unchanged;
// - SparseGPT (Frantar & Alistarh 2023, IST-DASLab/sparsegpt sparsegpt.py): column by column, a
//   pruned weight's error is compensated on the columns after it through the inverse Hessian of
//   the layer's squared error (H = X^T X + lambda I), with the mask chosen a block of columns at a
//   time from the weights updated so far.
// Either a fraction of each row (unstructured) or N:M (N kept in every M consecutive inputs of a
// row, the 2:4 pattern sparse tensor cores run). Calibration per expert (the tokens routed to it)
// is the caller's: InputStatistics gathers one layer's X^T X from the tokens it is given.
#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>
#include <string>

namespace moeprune::compression {

/// Which weights of each output row go.
struct SparsityPattern {
  /// Unstructured: this fraction of every row, in (0, 1).
  static SparsityPattern unstructured(double ratio);
  /// N:M: N weights kept in every group of M consecutive inputs, 0 < N < M (in % M == 0).
  static SparsityPattern n_of_m(int64_t n, int64_t m);
  /// Parses "0.5" (unstructured) or "2:4" (N:M); throws naming `text` otherwise.
  static SparsityPattern parse(const std::string& text);

  bool is_n_of_m() const { return m > 0; }
  /// The fraction of weights that go: ratio, or (M - N) / M.
  double pruned_fraction() const;
  std::string describe() const;

  double ratio = 0.0;
  int64_t n = 0, m = 0;
};

/// Calibration statistics of one linear layer's inputs: the Gram matrix sum_t w_t x_t x_t^T
/// (fp64, [in, in]) over the tokens given, w_t a token's weight (1 unless given: MoE-Pruner
/// weights a token by its router weight for the expert).
class InputStatistics {
 public:
  /// `full` = false keeps only the diagonal (sum_t w_t x_tj^2, all Wanda needs): in numbers
  /// instead of in x in, and T x in work per add instead of T x in x in.
  explicit InputStatistics(int64_t in_features, bool full = true);
  /// Adds tokens `x` [T, in] (any float dtype), with optional weights [T] (>= 0).
  void add(const torch::Tensor& x, const torch::Tensor& token_weights = {});

  int64_t in_features() const { return in_features_; }
  bool full() const { return full_; }
  /// Tokens added (not weighted).
  int64_t tokens() const { return tokens_; }
  /// sum_t w_t x_t x_t^T, [in, in] fp64; refused for diagonal-only statistics.
  const torch::Tensor& gram() const;
  /// ||X_j||_2 over the (weighted) tokens, [in] fp64: Wanda's input norms.
  torch::Tensor column_norms() const;
  /// The (weighted) mean of |x_j| over the tokens, [in] fp64: AWQ's activation magnitudes.
  torch::Tensor mean_abs() const;

 private:
  int64_t in_features_ = 0;
  bool full_ = true;
  torch::Tensor sums_;      // [in, in], or [in] when not full
  torch::Tensor abs_sums_;  // [in]: sum_t w_t |x_t|
  double weight_sum_ = 0.0;
  int64_t tokens_ = 0;
};

/// The weights kept (true) under `pattern` by |W_ij| alone. weight [out, in].
torch::Tensor magnitude_mask(const torch::Tensor& weight, const SparsityPattern& pattern);

/// Wanda's kept weights: by |W_ij| * norms_j within each row (norms: InputStatistics::
/// column_norms, [in]). Ties go by input index (the lower pruned first), as a stable sort does.
torch::Tensor wanda_mask(const torch::Tensor& weight, const torch::Tensor& norms,
                         const SparsityPattern& pattern);

struct SparseGPTOptions {
  /// lambda = percdamp * mean(diag(H)) added to H's diagonal (the reference's default).
  TORCH_ARG(double, percdamp) = 0.01;
  /// Columns per lazy block; also the span an unstructured mask is chosen over.
  TORCH_ARG(int64_t, block_size) = 128;
  /// The computation's dtype (the reference: fp32); the result has the weight's.
  TORCH_ARG(torch::Dtype, dtype) = torch::kFloat;
};

struct SparseGPTResult {
  /// The new weight [out, in] (the weight's dtype) with exact zeros where pruned.
  torch::Tensor weight;
  /// Kept weights (true), [out, in].
  torch::Tensor mask;
  /// The reference's loss: sum over pruned weights of (w - 0)^2 / [Hinv]_jj^2, halved.
  double loss = 0.0;
};

/// What SparseGPT derives from the inputs' Gram matrix alone, shared by every weight those inputs
/// reach (an expert's gate and up projections): the upper Cholesky factor of the damped
/// Hessian's inverse, [in, in] in options.dtype(), and the inputs no token reached ([in] bool).
struct SparseGPTFactor {
  torch::Tensor upper;
  torch::Tensor dead;
};
/// Refuses a Hessian that is not positive definite after damping (too few calibration tokens).
SparseGPTFactor sparsegpt_factor(const torch::Tensor& gram, const SparseGPTOptions& options = {});

/// SparseGPT on weight [out, in] with the inputs' Gram matrix `gram` [in, in]
/// (InputStatistics::gram; its scale does not matter). Inputs no token reached (a zero diagonal)
/// are pruned and take no part. Unstructured masks prune, within each block of columns (all
/// rows), every value of W^2 / [Hinv]_jj^2 not above the block's sorted value at position
/// k = floor(ratio x the block's size), counting from 0, as the reference does (k + 1 values
/// without ties); N:M masks prune the M - N smallest of every group of M in each row.
SparseGPTResult sparsegpt(const torch::Tensor& weight, const torch::Tensor& gram,
                          const SparsityPattern& pattern, const SparseGPTOptions& options = {});
/// The same from a factor sparsegpt_factor computed with the same options.
SparseGPTResult sparsegpt(const torch::Tensor& weight, const SparseGPTFactor& factor,
                          const SparsityPattern& pattern, const SparseGPTOptions& options = {});

}  // namespace moeprune::compression
