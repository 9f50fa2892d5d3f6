#pragma once

#include <moeprune/routing/functional/routing.h>
#include <moeprune/routing/router.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

namespace moeprune {

struct TopKRouterOptions {
  TopKRouterOptions(int64_t d_model, int64_t num_experts, int64_t k = 1)
      : d_model_(d_model), num_experts_(num_experts), routing_(k) {}
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, num_experts);
  /// k, capacity, Batch Priority Routing, renormalisation and routing groups.
  TORCH_ARG(functional::TopKRoutingOptions, routing);
  /// Std of the gaussian noise added to the logits while training, in units of 1/E
  /// (V-MoE: 1.0, i.e. std 1/E). 0 disables noise (and the load loss).
  TORCH_ARG(double, noise_std) = 0.0;
  /// Multiplicative uniform jitter on the router input while training (Switch: 0.01).
  TORCH_ARG(double, jitter) = 0.0;
  /// Route each input item (an image, a sequence) as its own group, ignoring
  /// routing.group_size (HF Switch: capacity per sequence).
  TORCH_ARG(bool, group_per_item) = false;
  /// Refuse NaN or inf logits (costs one reduction per call).
  TORCH_ARG(bool, check_finite) = true;
};

/// Token-choice top-k router: softmax over all E experts, then each token takes its top k
/// (V-MoE, Switch with k = 1, Mixtral with renormalisation). See functional::top_k_route.
/// Losses: importance, load (with noise), load balance and z-loss, all reported.
class TopKRouterImpl : public torch::nn::Cloneable<TopKRouterImpl>, public Router {
 public:
  explicit TopKRouterImpl(TopKRouterOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  RouterOutput forward(const torch::Tensor& tokens) { return route(tokens, {}, -1, 0); }
  RouterOutput route(const torch::Tensor& tokens, const torch::Tensor& expert_map,
                     int64_t num_bank_experts, int64_t item_size) override;
  int64_t num_experts() const override { return options.num_experts(); }
  int64_t min_bank_experts() const override { return 1; }
  torch::Tensor router_weight() const override { return weight; }
  KeepConstraint keep_constraint() const override { return {1, options.routing().k()}; }
  void set_capacity_factor(double capacity_factor) override;
  void set_group_size(int64_t group_size) override;
  void drop_columns(const std::vector<int64_t>& rows) override;

  TopKRouterOptions options;
  torch::Tensor weight;  ///< [E, d]
};
TORCH_MODULE(TopKRouter);

}  // namespace moeprune
