#include <moeprune/routing/group_limited_router.h>

#include "routing/router_logits.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace moeprune {

GroupLimitedRouterImpl::GroupLimitedRouterImpl(GroupLimitedRouterOptions options_)
    : options(std::move(options_)) {
  reset();
}

void GroupLimitedRouterImpl::reset() {
  constexpr const char* who = "GroupLimitedRouter";
  const int64_t E = options.num_experts(), k = options.routing().k();
  const auto& g = options.groups();
  TORCH_CHECK(options.d_model() >= 1, who, ": d_model should be >= 1, got ", options.d_model());
  TORCH_CHECK(E >= 1, who, ": num_experts should be >= 1, got ", E);
  TORCH_CHECK(g.num_groups() >= 1 && E % g.num_groups() == 0, who, ": ", E,
              " experts do not split into n_group = ", g.num_groups(), " equal groups");
  TORCH_CHECK(g.groups_kept() >= 1 && g.groups_kept() <= g.num_groups(), who,
              ": topk_group should be in [1, n_group = ", g.num_groups(), "], got ",
              g.groups_kept());
  const int64_t per_group = E / g.num_groups();
  TORCH_CHECK(k >= 1 && k <= g.groups_kept() * per_group, who, ": k = ", k,
              " experts do not fit in topk_group = ", g.groups_kept(), " groups of ", per_group);
  TORCH_CHECK(g.num_groups() == 1 || g.group_score() != GroupScore::kTopTwoSum || per_group >= 2,
              who, ": groups scored by their top two need at least 2 experts each, got ",
              per_group);
  TORCH_CHECK(std::isfinite(g.scaling()), who, ": routed_scaling_factor should be finite, got ",
              g.scaling());
  if (options.routing().capacity_mode() == functional::CapacityMode::kFactor) {
    TORCH_CHECK(options.routing().capacity_factor() > 0.0, who,
                ": capacity_factor should be > 0, got ", options.routing().capacity_factor());
  }
  const double bound = 1.0 / std::sqrt(static_cast<double>(options.d_model()));
  weight =
      register_parameter("weight", torch::empty({E, options.d_model()}).uniform_(-bound, bound));
  e_score_correction_bias = g.correction_bias()
                                ? register_buffer("e_score_correction_bias", torch::zeros({E}))
                                : torch::Tensor();
}

void GroupLimitedRouterImpl::pretty_print(std::ostream& stream) const {
  const auto& g = options.groups();
  stream << "moeprune::GroupLimitedRouter(d_model=" << options.d_model()
         << ", experts=" << options.num_experts() << ", k=" << options.routing().k()
         << ", groups=" << g.groups_kept() << "/" << g.num_groups() << ", "
         << (g.score_function() == ScoreFunction::kSigmoid ? "sigmoid" : "softmax")
         << (g.correction_bias() ? ", bias" : "") << ")";
}

KeepConstraint GroupLimitedRouterImpl::keep_constraint() const {
  const auto& g = options.groups();
  const int64_t k = options.routing().k();
  // The kept groups must hold k experts; a group scored by its top two needs two.
  int64_t per_group = (k + g.groups_kept() - 1) / g.groups_kept();
  if (g.num_groups() > 1 && g.group_score() == GroupScore::kTopTwoSum) {
    per_group = std::max<int64_t>(per_group, 2);
  }
  return {g.num_groups(), per_group, /*equal_members=*/true};
}

RouterOutput GroupLimitedRouterImpl::route(const torch::Tensor& tokens,
                                           const torch::Tensor& expert_map,
                                           int64_t num_bank_experts, int64_t item_size) {
  constexpr const char* who = "GroupLimitedRouter";
  (void)item_size;  // groups of experts, not of tokens: items do not change the routing
  detail::check_router_input(tokens, options.d_model(), who);
  const auto& g = options.groups();
  const int64_t T = tokens.size(0), E = options.num_experts(), k = options.routing().k();
  const int64_t G = g.num_groups();
  const auto logits = detail::router_logits(tokens, weight, /*jitter=*/0.0, is_training());
  if (options.check_finite()) {
    detail::check_finite_logits(logits, tokens, weight, who);
  }
  const auto scores =
      g.score_function() == ScoreFunction::kSigmoid ? logits.sigmoid() : logits.softmax(-1);

  torch::Tensor expert_index;
  {
    // Selection is not differentiable (transformers runs it under no_grad).
    torch::NoGradGuard no_grad;
    auto choice = scores.detach();
    if (e_score_correction_bias.defined()) {
      choice = choice + e_score_correction_bias.to(choice.device(), torch::kFloat).unsqueeze(0);
    }
    if (G > 1 && T > 0) {
      const auto grouped = choice.view({T, G, E / G});
      const auto group_scores = g.group_score() == GroupScore::kMax
                                    ? std::get<0>(grouped.max(-1))
                                    : std::get<0>(grouped.topk(2, /*dim=*/-1)).sum(-1);
      // Ties between groups go to the lower group id (a stable descending sort).
      const auto ranked = std::get<1>(group_scores.sort(std::optional<bool>(true), /*dim=*/1,
                                                        /*descending=*/true));
      auto kept = torch::zeros({T, G}, choice.options().dtype(torch::kBool));
      kept.scatter_(1, ranked.narrow(1, 0, g.groups_kept()), true);
      choice = choice.masked_fill(
          kept.logical_not().unsqueeze(-1).expand({T, G, E / G}).reshape({T, E}), 0.0);
    }
    expert_index = std::get<1>(choice.sort(std::optional<bool>(true), /*dim=*/1,
                                           /*descending=*/true))
                       .narrow(1, 0, k)
                       .contiguous();
  }
  auto top = scores.gather(1, expert_index);
  if (options.routing().renormalize()) {
    top = top / (top.sum(1, /*keepdim=*/true) + 1e-20);
  }
  if (g.scaling() != 1.0) {
    top = top * g.scaling();
  }
  auto layout = options.routing();
  layout.renormalize(false);  // done above, with transformers' epsilon and before the scaling

  RouterOutput out;
  out.plan =
      functional::route_chosen(scores, expert_index, top, layout, expert_map, num_bank_experts);
  out.plan.router_logits = logits;
  const int64_t S = out.plan.group_size;
  const auto zero = torch::zeros({}, logits.options());
  out.losses.importance = zero;
  out.losses.load = zero;
  const auto normalised = g.score_function() == ScoreFunction::kSigmoid
                              ? scores / (scores.sum(-1, /*keepdim=*/true) + 1e-20)
                              : scores;
  out.losses.load_balance = functional::load_balance_loss(normalised, expert_index, S);
  out.losses.z_loss = functional::z_loss(logits);
  return out;
}

void GroupLimitedRouterImpl::set_capacity_factor(double capacity_factor) {
  TORCH_CHECK(capacity_factor > 0.0, "GroupLimitedRouter: capacity_factor should be > 0, got ",
              capacity_factor);
  options.routing().capacity_factor(capacity_factor);
}

void GroupLimitedRouterImpl::set_group_size(int64_t group_size) {
  TORCH_CHECK(group_size >= 0, "GroupLimitedRouter: group_size should be >= 0, got ", group_size);
  options.routing().group_size(group_size);
}

void GroupLimitedRouterImpl::drop_columns(const std::vector<int64_t>& rows) {
  constexpr const char* who = "GroupLimitedRouter";
  const int64_t E = options.num_experts(), G = options.groups().num_groups();
  const int64_t per_group = E / G;
  std::vector<int64_t> kept(static_cast<size_t>(G), 0);
  for (const int64_t r : rows) {
    TORCH_CHECK(r >= 0 && r < E, who, ": router row ", r, " is outside [0, ", E, ")");
    ++kept[static_cast<size_t>(r / per_group)];
  }
  for (int64_t grp = 0; grp < G; ++grp) {
    TORCH_CHECK(kept[static_cast<size_t>(grp)] == kept[0], who, ": group ", grp, " would keep ",
                kept[static_cast<size_t>(grp)], " experts and group 0 ", kept[0], "; n_group = ", G,
                " groups must stay equal (the router splits its experts into equal contiguous "
                "groups)");
  }
  const auto need = keep_constraint().min_per_member;
  TORCH_CHECK(kept[0] >= need, who, ": keeping ", kept[0], " experts per group, fewer than the ",
              need, " the routing needs (k = ", options.routing().k(),
              " within topk_group = ", options.groups().groups_kept(), " groups)");
  detail::keep_router_rows(weight, rows, who);
  if (e_score_correction_bias.defined()) {
    torch::NoGradGuard no_grad;
    e_score_correction_bias.set_data(e_score_correction_bias.index_select(
        0, torch::tensor(rows, torch::kLong).to(e_score_correction_bias.device())));
  }
  options.num_experts(static_cast<int64_t>(rows.size()));
}

}  // namespace moeprune
