#pragma once

#include <moeprune/functional/aux_losses.h>
#include <moeprune/routing_plan.h>

#include <torch/types.h>

namespace moeprune {

/// What a router returns: the plan for dispatch/combine and its auxiliary losses.
struct RouterOutput {
  RoutingPlan plan;
  functional::AuxLosses losses;
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
};

}  // namespace moeprune
