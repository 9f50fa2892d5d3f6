#pragma once

// Expert parallelism: one MoE layer's experts spread over the processes of a group, each process
// routing its own tokens and sending every row to the process that holds its expert (an uneven
// all-to-all), then taking the outputs back (the reverse all-to-all) and combining them in slot
// order. DeepSpeed-MoE, Megatron-Core and Tutel split experts this way; here it is PyTorch's c10d.
// docs/distributed.md.
#include <moeprune/distributed/process_group.h>
#include <moeprune/layers/moe_layer.h>

#include <cstdint>
#include <vector>

namespace moeprune::distributed {

/// Which process holds each of a layer's bank experts, in bank order (the held experts'
/// increasing ids; ExpertBank::expert_ids()).
struct ExpertPlacement {
  std::vector<int64_t> rank_of;

  /// Contiguous blocks as even as they go: E experts over W ranks, the first E % W ranks holding
  /// one more. Every rank holds at least one (E >= W).
  static ExpertPlacement even(int64_t num_experts, int64_t world_size);
  /// The experts rank `rank` holds, as bank positions (increasing).
  std::vector<int64_t> experts_of(int64_t rank) const;
};

/// Spreads `layer`'s experts over `group` as `placement` says (default: even). Every process
/// calls it with the same layer (the same weights, built from one seed or loaded from one
/// checkpoint) and the same placement; prune or merge before, not after. The layer keeps its
/// router and this process's experts only (the others' memory is freed). Its forward then routes
/// this process's tokens, exchanges rows with the other processes and combines; autograd runs
/// through both exchanges. On the CPU its output, its input gradient and its experts' gradients
/// equal those of the single-process layer on all processes' tokens bit for bit, when each
/// process's tokens are whole routing groups (docs/distributed.md, "Determinism").
void shard_experts(MoELayer& layer, const ProcessGroup& group,
                   const ExpertPlacement& placement = {});

/// Bytes one forward call of `layer` sent to other processes in its last forward (rows and
/// counts), for the benchmarks; 0 for a layer that is not sharded.
int64_t last_exchange_bytes(const MoELayer& layer);

}  // namespace moeprune::distributed
