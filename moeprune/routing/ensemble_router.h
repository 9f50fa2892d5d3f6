#pragma once

#include <moeprune/routing/functional/routing.h>
#include <moeprune/routing/router.h>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

namespace moeprune {

struct EnsembleRouterOptions {
  EnsembleRouterOptions(int64_t d_model, int64_t num_experts, int64_t ensemble_size, int64_t k = 1)
      : d_model_(d_model), num_experts_(num_experts), ensemble_size_(ensemble_size), routing_(k) {}
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, num_experts);
  /// M ensemble members; member m owns experts [m E/M, (m+1) E/M).
  TORCH_ARG(int64_t, ensemble_size);
  /// Routing within a member (k per member, capacity, BPR). group_size counts the tokens of all
  /// members together, as in vmoe; each member routes its share of a group.
  TORCH_ARG(functional::TopKRoutingOptions, routing);
  TORCH_ARG(double, noise_std) = 0.0;
  TORCH_ARG(bool, check_finite) = true;
};

/// E3-MoE's ensemble router (Allingham et al. 2021; vmoe/nn/ensemble_routing.py). Inputs are
/// replicated M times before the first MoE layer; item i (an image or sequence of `item_size`
/// consecutive tokens) belongs to member i mod M, the order jnp.repeat gives. Member m routes only
/// among its own E/M experts (a block-diagonal gate): softmax and top-k over its block. Losses
/// are computed per member and averaged.
class EnsembleRouterImpl : public torch::nn::Cloneable<EnsembleRouterImpl>, public Router {
 public:
  explicit EnsembleRouterImpl(EnsembleRouterOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  RouterOutput forward(const torch::Tensor& tokens) { return route(tokens, {}, -1, 1); }
  RouterOutput route(const torch::Tensor& tokens, const torch::Tensor& expert_map,
                     int64_t num_bank_experts, int64_t item_size) override;
  int64_t num_experts() const override { return options.num_experts(); }
  int64_t min_bank_experts() const override { return options.ensemble_size(); }
  torch::Tensor router_weight() const override { return weight; }
  /// Each member keeps at least its k experts (E3-MoE prunes within members).
  KeepConstraint keep_constraint() const override {
    return {options.ensemble_size(), options.routing().k()};
  }
  void set_capacity_factor(double capacity_factor) override;
  void set_group_size(int64_t group_size) override;
  bool can_drop_columns() const override { return false; }
  bool can_merge() const override { return false; }
  /// Refused: a member's experts are a fixed block of the router's rows.
  void drop_columns(const std::vector<int64_t>& rows) override;

  EnsembleRouterOptions options;
  torch::Tensor weight;  ///< [E, d]; rows of member m are [m E/M, (m+1) E/M)
};
TORCH_MODULE(EnsembleRouter);

}  // namespace moeprune
