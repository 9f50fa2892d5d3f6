#pragma once

// The seam between a MoE layer and experts spread over several processes (expert parallelism,
// moeprune/distributed/expert_parallel.h): the layer routes, dispatches and combines as always;
// an exchange decides where each buffer row's expert runs. The layer knows nothing of processes.
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace moeprune {

class ExpertBankImpl;

class ExpertExchange {
 public:
  virtual ~ExpertExchange() = default;
  /// [E_router] int64 on `device`: the buffer position of each router expert's bank expert
  /// (positions order the experts of every process, rank after rank), -1 for a pruned one.
  virtual torch::Tensor expert_map(const torch::Device& device) const = 0;
  /// Number of buffer positions: the bank experts of all processes.
  virtual int64_t num_positions() const = 0;
  /// Original ids of the bank experts of all processes, increasing: what the layer's bank held
  /// before it was spread (its state).
  virtual std::vector<int64_t> held_experts() const = 0;
  /// Runs this process's dispatched `rows` [R, d] (position-major; `position_counts`
  /// [num_positions()] rows each) through their experts, wherever they are, while `local` (this
  /// process's experts) serves the rows the other processes send. Returns the experts' outputs
  /// for `rows`, in the same order; differentiable. Every process calls it, in the same order.
  virtual torch::Tensor run(const torch::Tensor& rows, const torch::Tensor& position_counts,
                            ExpertBankImpl& local) = 0;
};

}  // namespace moeprune
