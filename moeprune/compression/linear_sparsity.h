#pragma once

// Sparsity in a model's dense linear layers (attention, shared experts, dense MLPs), the targets
// beyond the routed experts: each layer calibrated on its own inputs, captured while the model
// runs (LinearInputCapture), with the methods and patterns of the experts' (expert_sparsity.h).
// As in the Wanda and SparseGPT references, every layer of a block is calibrated from one pass of
// the block before any of them is pruned.
#include <moeprune/compression/expert_sparsity.h>
#include <moeprune/compression/weight_sparsity.h>
#include <moeprune/layers/linear_capture.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace moeprune::compression {

/// What sparsifying did to one block's dense linear layers of one role.
struct LinearSparsityReport {
  int64_t block = 0;
  /// The layers' common module path ("model.layers.3.self_attn") and their names.
  std::string name;
  LinearRole role = LinearRole::kAttention;
  std::vector<std::string> linears;
  /// Calibration tokens that reached the first of them (0 without calibration).
  int64_t tokens = 0;
  /// Weights (biases excluded) and how many are zero after pruning.
  int64_t weights = 0;
  int64_t zeros = 0;
  /// sum ||(W - W') X^T||^2 / sum ||W X^T||^2 over the layers, each on its own inputs; NaN
  /// without calibration.
  double relative_error = 0.0;
  double seconds = 0.0;

  double sparsity() const {
    return weights > 0 ? static_cast<double>(zeros) / static_cast<double>(weights) : 0.0;
  }
};

/// Called after each group of dense layers is pruned (progress).
using LinearSparsityCallback = std::function<void(const LinearSparsityReport& report)>;

/// The input statistics (full Gram matrices, InputStatistics) of `linears`, gathered from every
/// call they receive while this lives.
class LinearCalibration {
 public:
  explicit LinearCalibration(const std::vector<LinearEntry>& linears);
  ~LinearCalibration();
  LinearCalibration(const LinearCalibration&) = delete;
  LinearCalibration& operator=(const LinearCalibration&) = delete;

  /// Stops capturing and hands over the statistics, one per layer in order; refuses, naming it,
  /// a layer no calibration token reached (a model that runs it outside torch's linear).
  std::vector<InputStatistics> finish();

 private:
  std::vector<LinearEntry> linears_;
  std::vector<InputStatistics> stats_;
  std::unique_ptr<LinearInputCapture> capture_;
};

/// Prunes `linears` (one block's layers of one role) in place with options' method and pattern,
/// each from its statistics (`inputs`: one per layer; null: no calibration, magnitude only).
/// Pruned weights become exact zeros; biases are kept.
LinearSparsityReport sparsify_linears(const std::vector<LinearEntry>& linears,
                                      const std::vector<InputStatistics>* inputs,
                                      const ExpertSparsityOptions& options);

/// `linears` grouped by (block, role), in order of their first layer.
std::vector<std::vector<LinearEntry>> group_linears(const std::vector<LinearEntry>& linears);

}  // namespace moeprune::compression
