#pragma once

#include <moeprune/routing/functional/aux_losses.h>
#include <moeprune/routing/routing_plan.h>

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace moeprune {

/// What a router returns: the plan for dispatch/combine and its auxiliary losses.
struct RouterOutput {
  RoutingPlan plan;
  functional::AuxLosses losses;
};

/// How many experts a pruned layer must keep for its router to work: `members` equal blocks of
/// the router's experts (E3-MoE's ensemble members, a group-limited router's groups; 1
/// otherwise), each keeping at least `min_per_member` (k for token choice, 1 for expert choice).
/// `equal_members`: every block must keep the same number (a group-limited router splits its
/// experts into equal contiguous groups, so unequal pruning would move experts between groups).
struct KeepConstraint {
  int64_t members = 1;
  int64_t min_per_member = 1;
  bool equal_members = false;
  int64_t min_total() const { return members * min_per_member; }
};

/// The interface every router module implements, so a MoELayer can hold any of them.
/// The router's parameter is `weight` [E, d] (row s is expert s's router vector w_r^(s), the
/// layout of torch::nn::Linear and of Hugging Face checkpoints).
class Router {
 public:
  virtual ~Router() = default;
  /// Routes `tokens` [T, d]. `expert_map` [E] (optional) maps router experts to the experts the
  /// bank holds (-1: removed); `num_bank_experts` is the bank size. `item_size` is the number
  /// of consecutive tokens that belong to one input item (an image or a sequence).
  virtual RouterOutput route(const torch::Tensor& tokens, const torch::Tensor& expert_map,
                             int64_t num_bank_experts, int64_t item_size) = 0;
  /// Number of experts the router scores (its width E).
  virtual int64_t num_experts() const = 0;
  /// Smallest number of experts a bank must keep for this router to work.
  virtual int64_t min_bank_experts() const = 0;
  /// The [E, d] router weight.
  virtual torch::Tensor router_weight() const = 0;
  /// The router's other per-expert tensor, [E] float32, when it has one (DeepSeek-V3 / GLM-4.5:
  /// e_score_correction_bias, added to the scores for the choice only); undefined otherwise. Its
  /// rows follow the router weight's (cut with them). Loaders copy into it; savers write it.
  virtual torch::Tensor router_bias() const { return {}; }

  /// What a pruning must leave (checked by plans before any change).
  virtual KeepConstraint keep_constraint() const = 0;
  /// Changes the capacity factor (V-MoE trains at 1.05 and fine-tunes/evaluates at 1.5). Routers
  /// with a fixed or no capacity record it for when their mode uses it.
  virtual void set_capacity_factor(double capacity_factor) = 0;
  /// Changes the routing group size in tokens (0: one group).
  virtual void set_group_size(int64_t group_size) = 0;
  /// Whether pruned experts' router rows can be removed (an ensemble's members keep theirs).
  virtual bool can_drop_columns() const { return true; }
  /// Whether pruning always removes the router rows (expert choice: an expert that no longer
  /// exists cannot pick tokens, so its row has no meaning).
  virtual bool always_drops_columns() const { return false; }
  /// Whether experts behind this router may be merged (M-SMoE). An ensemble's members route
  /// separately and are not merged.
  virtual bool can_merge() const { return true; }
  /// Keeps only the router rows `rows` (increasing positions in [0, E)); the width becomes
  /// rows.size(). Token choice then renormalises its top-k weights over the survivors (Expert
  /// Drop's semantics, He et al. 2024).
  virtual void drop_columns(const std::vector<int64_t>& rows) = 0;
};

}  // namespace moeprune
