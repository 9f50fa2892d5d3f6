#pragma once

// The exchange of an expert-parallel layer (layers/expert_exchange.h): which process holds which
// bank expert, and the two all-to-alls that serve a layer's rows through them. Internal to
// distributed/: shard_experts makes one, the gathers read its placement.
#include <moeprune/distributed/expert_parallel.h>

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace moeprune::distributed::detail {

// Serves a layer's rows through the experts of every process. Positions number the bank experts
// rank after rank (within a rank in bank order), so the layer's position-major buffer is already
// split by destination.
class ExpertParallelExchange : public ExpertExchange {
 public:
  ExpertParallelExchange(ProcessGroup group, const torch::Tensor& router_to_bank,
                         const ExpertPlacement& placement, std::vector<int64_t> held);

  torch::Tensor expert_map(const torch::Device& device) const override;
  int64_t num_positions() const override;
  std::vector<int64_t> held_experts() const override { return held_ids_; }
  torch::Tensor run(const torch::Tensor& rows, const torch::Tensor& position_counts,
                    ExpertBankImpl& local) override;

  const ExpertPlacement& placement() const { return placement_; }
  const ProcessGroup& group() const { return group_; }
  /// Original ids of the experts `rank` holds, increasing.
  std::vector<int64_t> experts_of(int64_t rank) const;
  int64_t last_bytes() const { return last_bytes_; }

 private:
  ProcessGroup group_;
  ExpertPlacement placement_;
  std::vector<int64_t> held_ids_;      // bank experts of all processes (original ids)
  std::vector<int64_t> first_, held_;  // per rank: its first position and its expert count
  mutable torch::Tensor map_;
  int64_t last_bytes_ = 0;
};

/// The exchange of `layer` when it is spread by shard_experts, else nullptr.
ExpertParallelExchange* exchange_of(const MoELayer& layer);

}  // namespace moeprune::distributed::detail
