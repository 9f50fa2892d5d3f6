#pragma once

// Routing as pure functions of the router probabilities: which slots go to which expert, which
// are dropped, and where each kept slot sits in the expert-major buffer. The router modules
// (TopKRouter, ExpertChoiceRouter, EnsembleRouter) compute logits and call these.
#include <moeprune/routing/routing_plan.h>

#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>

namespace moeprune::functional {

/// How many slots an expert accepts per routing group.
enum class CapacityMode {
  kFactor,    ///< C = ceil(S * k * capacity_factor / E), rounded up to capacity_multiple (V-MoE).
  kFixed,     ///< C = expert_capacity (HF Switch Transformers, per sequence).
  kDropless,  ///< no limit (Mixtral).
};

/// V-MoE's capacity (vmoe/moe.py, compute_capacity): ceil(tokens * k * cf / E), rounded up to a
/// multiple of `multiple` (no rounding when multiple <= 1). Throws when cf <= 0.
int64_t capacity_from_factor(int64_t group_size, int64_t k, double capacity_factor,
                             int64_t num_experts, int64_t multiple = 4);

/// Token-choice routing: each token picks its k most probable experts.
struct TopKRoutingOptions {
  TopKRoutingOptions(int64_t k = 1) : k_(k) {}  // NOLINT(google-explicit-constructor)
  /// Experts per token.
  TORCH_ARG(int64_t, k);
  TORCH_ARG(CapacityMode, capacity_mode) = CapacityMode::kDropless;
  TORCH_ARG(double, capacity_factor) = 1.0;
  /// Capacity per expert and group for CapacityMode::kFixed.
  TORCH_ARG(int64_t, expert_capacity) = 0;
  TORCH_ARG(int64_t, capacity_multiple) = 4;
  /// Batch Priority Routing: within a group, tokens are served in order of their top-1 gate,
  /// highest first (ties: earlier token first); otherwise in position order.
  TORCH_ARG(bool, batch_priority) = false;
  /// Divide each token's k weights by their sum (Mixtral); otherwise the weight is the gate.
  TORCH_ARG(bool, renormalize) = false;
  /// Tokens per routing group; capacity applies per group. 0: all tokens form one group.
  TORCH_ARG(int64_t, group_size) = 0;
  /// The fixed-size layout (RoutingPlan::padded): the buffer has max_rows() rows whatever the
  /// drops, so no step reads the device (a CUDA graph can capture it). Off: exactly the kept rows.
  TORCH_ARG(bool, fixed_rows) = false;
};

/// Routes `probs` [T, E] (each row a distribution over the E experts) with top-k token choice.
/// Slots are filled choice by choice (every token's 1st choice before any token's 2nd), per group;
/// a slot at position >= capacity in its expert is dropped. Ties between experts go to the lower
/// expert id.
///
/// `expert_map` [E] int64 (optional) maps router experts to the bank's experts (several may share
/// one: merged experts), -1 for experts the bank no longer holds: slots routed there are dropped
/// (they output zero) but still occupy their capacity position. `num_bank_experts` is the bank size
/// (E when no map).
RoutingPlan top_k_route(const torch::Tensor& probs, const TopKRoutingOptions& options,
                        const torch::Tensor& expert_map = {}, int64_t num_bank_experts = -1);

/// Token-choice routing of experts already chosen: token t's slots go to `expert_index` [T, k]
/// (in choice order, router ids in [0, E)) with combine weights `weight` [T, k]. Capacity,
/// drops, Batch Priority Routing (by the first weight) and the map work as in top_k_route;
/// `probs` [T, E] is recorded as the plan's router_probs. For routers that select otherwise than
/// by the k largest probabilities (group-limited routing, group_limited_router.h). The experts
/// are checked to lie in [0, E) unless options.fixed_rows() (the check reads the device).
RoutingPlan route_chosen(const torch::Tensor& probs, const torch::Tensor& expert_index,
                         const torch::Tensor& weight, const TopKRoutingOptions& options,
                         const torch::Tensor& expert_map = {}, int64_t num_bank_experts = -1);

/// Expert-choice routing (Zhou et al. 2022): in each group of S tokens, expert e takes the C
/// tokens with the largest probs[:, e], C = capacity_from_factor(S, 1, cf, E, multiple) capped
/// at S. Slots are one per expert (K = E); ties go to the earlier token.
RoutingPlan expert_choice_route(const torch::Tensor& probs, double capacity_factor,
                                int64_t capacity_multiple = 4, int64_t group_size = 0,
                                const torch::Tensor& expert_map = {}, int64_t num_bank_experts = -1,
                                bool fixed_rows = false);

/// Builds the buffer layout of a plan: rows are the kept slots, in the order `order` (a
/// permutation of the T*K flat slots, sorted by router expert first). Fills slot_row, row_slot
/// and the per-expert counts and offsets from `bank_expert` [T, K] (the bank's expert of each
/// slot). `regroup`: rows are first grouped by bank expert (stable, keeping `order` within
/// each), which a map that is not increasing needs (merged banks, where several router experts
/// share one bank expert). The routers pass it whenever they are given an expert map; for a
/// pruned bank's increasing map it reorders nothing (one sort of T*K keys).
///
/// `max_rows` >= 0 asks for the fixed-size layout: the buffer has exactly max_rows rows (a bound
/// on the kept slots the caller guarantees: T*K, or E * capacity * groups), the kept rows first in
/// the same order, then padding rows (row_slot -1). Counts and offsets come from a fixed-size
/// histogram over the bank's experts and a scan, so nothing is read back from the device.
void assign_rows(RoutingPlan& plan, const torch::Tensor& bank_expert, const torch::Tensor& kept,
                 const torch::Tensor& order, int64_t num_bank_experts, bool regroup = false,
                 int64_t max_rows = -1);

}  // namespace moeprune::functional
