#pragma once

// Group-limited token-choice routing, the router of DeepSeek-V2 (group_limited_greedy),
// DeepSeek-V3, GLM-4.5 and Kimi-K2 (METHODS.md section 7; transformers' modeling_deepseek_v3.py,
// DeepseekV3TopkRouter, and modeling_deepseek_v2.py, DeepseekV2MoEGate).
#include <moeprune/routing/functional/routing.h>
#include <moeprune/routing/router.h>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

namespace moeprune {

/// How the router turns logits into per-expert scores.
enum class ScoreFunction {
  kSoftmax,  ///< softmax over the E experts (DeepSeek-V2)
  kSigmoid,  ///< sigmoid of each logit (DeepSeek-V3, GLM-4.5)
};

/// How a group of experts is scored when choosing groups.
enum class GroupScore {
  kMax,        ///< its best expert's score (DeepSeek-V2, group_limited_greedy)
  kTopTwoSum,  ///< the sum of its two best experts' scores (DeepSeek-V3)
};

/// What distinguishes group-limited routing from plain top-k.
struct GroupLimitedRoutingOptions {
  TORCH_ARG(ScoreFunction, score_function) = ScoreFunction::kSigmoid;
  /// n_group: the E experts form this many equal contiguous groups.
  TORCH_ARG(int64_t, num_groups) = 1;
  /// topk_group: each token chooses its experts within this many groups.
  TORCH_ARG(int64_t, groups_kept) = 1;
  TORCH_ARG(GroupScore, group_score) = GroupScore::kTopTwoSum;
  /// A learned per-expert bias (e_score_correction_bias) added to the scores for choosing groups
  /// and experts only; the weights come from the unbiased scores (DeepSeek-V3's auxiliary-loss-
  /// free balancing, section 2.1.2 of its report).
  TORCH_ARG(bool, correction_bias) = true;
  /// routed_scaling_factor: the k weights (after normalisation, when the routing renormalises)
  /// are multiplied by it.
  TORCH_ARG(double, scaling) = 1.0;
};

struct GroupLimitedRouterOptions {
  GroupLimitedRouterOptions(int64_t d_model, int64_t num_experts, int64_t k = 8)
      : d_model_(d_model), num_experts_(num_experts), routing_(k) {}
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, num_experts);
  /// k, capacity (DeepSeek: dropless) and renormalize (norm_topk_prob; the sum gets 1e-20 as in
  /// transformers, so an all-zero top k gives zero weights rather than NaN).
  TORCH_ARG(functional::TopKRoutingOptions, routing);
  TORCH_ARG(GroupLimitedRoutingOptions, groups);
  /// Refuse NaN or inf logits (costs one reduction per call).
  TORCH_ARG(bool, check_finite) = true;
};

/// Group-limited top-k router. For token x: scores s = f(W x) (softmax or sigmoid, fp32); choice
/// scores c = s + b (b the correction bias, zero without one); the groups are ranked by the max
/// (V2) or the sum of the top two (V3) of their c, the top `groups_kept` survive, and every
/// expert of the other groups gets c = 0 (transformers masks with 0.0, not -inf: with a negative
/// bias a masked expert can still outrank a kept one, and moeprune computes as transformers
/// does); the k largest c (ties to the lower id) are the experts; their weights are s, divided
/// by their sum + 1e-20 when routing().renormalize(), times `scaling`.
///
/// Pruning with the router rows dropped keeps the groups equal (keep_constraint) and slices the
/// bias with the rows: routing then equals the unpruned router with the pruned experts' scores
/// set to -inf before grouping (for sigmoid scores; softmax renormalises over the survivors).
/// Losses: z-loss, and the load-balance loss on the scores normalised per token (the shape of
/// DeepSeek-V3's sequence-wise balance loss, eqs. 17-20, over the routing group); importance and
/// load are zero.
class GroupLimitedRouterImpl : public torch::nn::Cloneable<GroupLimitedRouterImpl>, public Router {
 public:
  explicit GroupLimitedRouterImpl(GroupLimitedRouterOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  RouterOutput forward(const torch::Tensor& tokens) { return route(tokens, {}, -1, 0); }
  RouterOutput route(const torch::Tensor& tokens, const torch::Tensor& expert_map,
                     int64_t num_bank_experts, int64_t item_size) override;
  int64_t num_experts() const override { return options.num_experts(); }
  int64_t min_bank_experts() const override { return 1; }
  torch::Tensor router_weight() const override { return weight; }
  torch::Tensor router_bias() const override { return e_score_correction_bias; }
  /// Every group keeps the same number of experts, at least two when groups are scored by
  /// their top two and enough that the kept groups hold k.
  KeepConstraint keep_constraint() const override;
  void set_capacity_factor(double capacity_factor) override;
  void set_group_size(int64_t group_size) override;
  /// Keeps rows `rows` of the weight and the bias; every group must keep the same number.
  void drop_columns(const std::vector<int64_t>& rows) override;

  GroupLimitedRouterOptions options;
  torch::Tensor weight;                   ///< [E, d]
  torch::Tensor e_score_correction_bias;  ///< [E] float32 buffer (zeros; undefined without one)
};
TORCH_MODULE(GroupLimitedRouter);

}  // namespace moeprune
