#pragma once

#include <moeprune/routing/router.h>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

namespace moeprune {

struct ExpertChoiceRouterOptions {
  ExpertChoiceRouterOptions(int64_t d_model, int64_t num_experts)
      : d_model_(d_model), num_experts_(num_experts) {}
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, num_experts);
  /// Each expert takes C = ceil(S * cf / E) tokens per group (rounded up to capacity_multiple);
  /// cf 2 gives the compute of top-2 token choice (Zhou et al.'s EC-CF2).
  TORCH_ARG(double, capacity_factor) = 2.0;
  TORCH_ARG(int64_t, capacity_multiple) = 4;
  /// Tokens per routing group; 0: all tokens form one group.
  TORCH_ARG(int64_t, group_size) = 0;
  /// Logit noise while training, in units of 1/E (vmoe's NoisyTopItemsPerExpertRouter).
  TORCH_ARG(double, noise_std) = 0.0;
  TORCH_ARG(bool, check_finite) = true;
  /// The fixed-size buffer layout (functional::TopKRoutingOptions::fixed_rows).
  TORCH_ARG(bool, fixed_rows) = false;
};

/// Expert-choice router (Zhou et al. 2022): probabilities softmax(x W^T) over experts; each
/// expert takes its top-C tokens of the group, a token may reach 0..E experts, and the combine
/// weight is the probability. No auxiliary loss applies; the z-loss is still reported.
class ExpertChoiceRouterImpl : public torch::nn::Cloneable<ExpertChoiceRouterImpl>, public Router {
 public:
  explicit ExpertChoiceRouterImpl(ExpertChoiceRouterOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  RouterOutput forward(const torch::Tensor& tokens) { return route(tokens, {}, -1, 0); }
  RouterOutput route(const torch::Tensor& tokens, const torch::Tensor& expert_map,
                     int64_t num_bank_experts, int64_t item_size) override;
  int64_t num_experts() const override { return options.num_experts(); }
  int64_t min_bank_experts() const override { return 1; }
  torch::Tensor router_weight() const override { return weight; }
  KeepConstraint keep_constraint() const override { return {1, 1}; }
  void set_capacity_factor(double capacity_factor) override;
  void set_group_size(int64_t group_size) override;
  bool always_drops_columns() const override { return true; }
  void drop_columns(const std::vector<int64_t>& rows) override;

  ExpertChoiceRouterOptions options;
  torch::Tensor weight;  ///< [E, d]
};
TORCH_MODULE(ExpertChoiceRouter);

}  // namespace moeprune
