#pragma once

// Expert parallelism: one MoE layer's experts spread over the processes of a group, each process
// routing its own tokens and sending every row to the process that holds its expert (an uneven
// all-to-all), then taking the outputs back (the reverse all-to-all) and combining them in slot
// order. DeepSpeed-MoE, Megatron-Core and Tutel split experts this way; here it is PyTorch's c10d.
// docs/distributed.md.
#include <moeprune/distributed/process_group.h>
#include <moeprune/layers/moe_layer.h>
#include <moeprune/layers/moe_view.h>

#include <cstdint>
#include <functional>
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

/// Spreads every MoE layer of `view` (a model's layers) evenly over `group`, as above. Loading a
/// checkpoint on every process and then spreading it is how an expert-parallel model resumes.
void shard_experts(const MoEView& view, const ProcessGroup& group);

/// Brings a spread layer's experts back to every process (each sends its experts to the others),
/// so the layer again holds all of them and runs on its own, as before shard_experts: the same
/// parameters (their data regrown, gradients dropped) and the same state. Every process calls
/// it. For pruning an expert-parallel model exactly as one process would (score, plan and apply
/// on the whole layers, the same on every process, then shard_experts again) and for exporting
/// it. Each process then holds the whole layer: it needs that memory.
void unshard_experts(MoELayer& layer);
/// Every spread MoE layer of `view`, in order.
void unshard_experts(const MoEView& view);

/// Writes an expert-parallel model once: on rank `root` every spread layer of `view` receives the
/// other processes' experts (they only send theirs), `write` runs there with the whole model
/// (save_vision_transformer, save_causal_lm, ...), and the layers are spread again as they were,
/// their parameters keeping their identity (an optimiser stays valid). Every process calls it,
/// with the same view and group. When `write` throws on `root` every process throws: `root` the
/// error itself, the others naming it. Optimiser moments of the experts stay with their process.
void write_on_root(const MoEView& view, const ProcessGroup& group,
                   const std::function<void()>& write, int64_t root = 0);

/// Bytes one forward call of `layer` sent to other processes in its last forward (rows and
/// counts), for the benchmarks; 0 for a layer that is not sharded.
int64_t last_exchange_bytes(const MoELayer& layer);

}  // namespace moeprune::distributed
