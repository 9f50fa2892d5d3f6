#pragma once

// The score Layer Drop and Block Drop share (He et al. 2024, "Demystifying the Compression of
// Mixture-of-Experts Through a Unified Framework", section 3; DaizeDong/Unified-MoE-Compression,
// src/llmtuner/compression/prune/): how little a part of the network changes the residual stream,
// the mean over calibration tokens of cos(h_in, h_out). Model-neutral: each model family gathers
// its own states (models/vision/trimming.h, models/lm/trimming.h).
#include <torch/types.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace moeprune::compression {

/// Running mean of the cosine similarity between matching tokens of two states [..., d].
class CosineMean {
 public:
  /// Adds the tokens of `a` and `b` (same shape; computed in float64). When b's leading dimension
  /// is a multiple of a's, a is repeated along it first (E3-MoE replicates the batch inside the
  /// network).
  void add(torch::Tensor a, const torch::Tensor& b);
  /// The mean so far (0 before any token).
  double mean() const { return tokens_ > 0 ? sum_ / static_cast<double>(tokens_) : 0.0; }
  int64_t tokens() const { return tokens_; }

 private:
  double sum_ = 0;
  int64_t tokens_ = 0;
};

/// The keys of the `n` highest scores (equal scores: the earlier entry first), increasing.
std::vector<int64_t> highest_scores(const std::vector<std::pair<int64_t, double>>& scored,
                                    int64_t n);

}  // namespace moeprune::compression
