#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace moeprune {

/// How the tokens of one MoE layer call are assigned to experts: what every router produces and
/// what dispatch and combine consume.
///
/// Slots are token-major: token t owns the K slots [t, 0..K). K is k for token-choice routing and
/// E (one slot per expert) for expert-choice routing. The dispatched buffer is expert-major: the
/// rows of expert e are [expert_offsets[e], expert_offsets[e + 1]), so each expert runs one GEMM
/// on a contiguous block.
struct RoutingPlan {
  /// [T, K] int64: the router's expert (original id, 0..E) of each slot; -1 for an unused slot
  /// (expert choice: the experts that did not pick the token).
  torch::Tensor expert_index;
  /// [T, K] floating: the combine weight of each slot (differentiable w.r.t. the router).
  /// Dropped slots keep their gate value here; slot_row tells that they are dropped.
  torch::Tensor combine_weight;
  /// [T, K] int64: the buffer row of each slot, or -1 when the slot is dropped (over capacity,
  /// unused, or routed to an expert the bank no longer holds).
  torch::Tensor slot_row;
  /// [R] int64: the flat slot index t * K + j that each buffer row came from; -1 for a padding
  /// row (fixed_rows).
  torch::Tensor row_slot;
  /// [E_bank] int64: rows per expert held by the bank (the bank's local order).
  torch::Tensor expert_counts;
  /// [E_bank + 1] int64: exclusive prefix sum of expert_counts.
  torch::Tensor expert_offsets;
  /// [T, E] float32: the router's logits before noise (for auxiliary losses and criteria).
  torch::Tensor router_logits;
  /// [T, E] float32: the probabilities the selection used (softmax of the noisy logits while
  /// training with noise, of the clean ones otherwise).
  torch::Tensor router_probs;
  /// Rows each expert may take per routing group; -1 when routing is dropless.
  int64_t capacity = -1;
  /// Tokens per routing group.
  int64_t group_size = 0;
  /// The fixed-size layout (TopKRoutingOptions::fixed_rows): the buffer has a bound's worth of
  /// rows, known before routing; the kept rows [0, expert_offsets[E]) come first, in the order
  /// of the exact layout, then padding rows (row_slot -1, dispatched as zeros, never combined).
  /// Its sizes do not depend on the routing, so no step reads the device.
  bool fixed_rows = false;

  int64_t num_tokens() const { return slot_row.size(0); }
  int64_t slots_per_token() const { return slot_row.size(1); }
  /// Rows of the dispatched buffer (padding included).
  int64_t num_rows() const { return row_slot.size(0); }
  /// Rows that reach an expert (reads the device for a fixed-size plan).
  int64_t num_kept_rows() const;
  /// Width of the router: the number of experts the layer was built with.
  int64_t num_router_experts() const { return router_logits.size(1); }
  /// Number of experts in the bank this plan dispatches to.
  int64_t num_bank_experts() const { return expert_counts.size(0); }

  /// [T, K] bool: slots that reach an expert.
  torch::Tensor kept() const { return slot_row.ge(0); }
  /// Rows per expert as host integers (the GEMM shapes).
  std::vector<int64_t> counts() const;
  /// Fraction of used slots (expert_index >= 0) that were dropped.
  double dropped_fraction() const;
  /// Fraction of tokens that reach no expert at all (their layer output is zero).
  double unrouted_fraction() const;
  /// The same plan on another device.
  RoutingPlan to(const torch::Device& device) const;
  /// The exact layout of the same routing: a fixed-size plan without its padding rows (reads the
  /// device once); any other plan as it is.
  RoutingPlan compact() const;
};

}  // namespace moeprune
