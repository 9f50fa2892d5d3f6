#pragma once

// Data parallelism for the trainers: after each backward pass, every process's gradients become
// the mean over the processes (replicated parameters by a bucketed all-reduce; the experts a
// process holds under expert parallelism by a division, since their gradients already gathered
// every process's tokens through the reverse all-to-all), and clipping uses the norm over all of
// them, so the replicated parameters stay equal on every process.
#include <moeprune/distributed/process_group.h>
#include <moeprune/layers/moe_layer.h>

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace moeprune::detail {

class GradientAverager {
 public:
  /// `params`: every trainable parameter of this process; `local_experts`: those of them that
  /// only this process holds (the expert banks of sharded layers).
  GradientAverager(distributed::ProcessGroup group, const std::vector<torch::Tensor>& params,
                   const std::vector<torch::Tensor>& local_experts,
                   int64_t bucket_bytes = int64_t{25} << 20);

  /// The averager of a model: its trainable `params` and its MoE layers, those spread over the
  /// processes (distributed::shard_experts) giving their banks as this process's experts.
  static std::unique_ptr<GradientAverager> for_model(
      const distributed::ProcessGroup& group, const std::vector<torch::Tensor>& params,
      const std::vector<std::pair<int64_t, MoELayer>>& moe_layers);

  /// Turns the gradients into the mean over the processes.
  void average();
  /// Scales every gradient by max_norm / (norm + 1e-6) when the global 2-norm (replicated
  /// gradients once, every process's experts) exceeds max_norm, as clip_grad_norm_ does on one
  /// process. Returns the norm.
  double clip(double max_norm);
  /// The mean of `value` over the processes (every process gets the same number).
  double mean(double value) const;
  /// The means of several values, in one all-reduce.
  std::vector<double> mean(const std::vector<double>& values) const;

  const distributed::ProcessGroup& group() const { return group_; }

 private:
  distributed::ProcessGroup group_;
  std::vector<torch::Tensor> replicated_, local_;
  int64_t bucket_bytes_;
};

}  // namespace moeprune::detail
