#include <moeprune/routing/expert_choice_router.h>

#include <moeprune/routing/functional/routing.h>

#include "routing/router_logits.h"

#include <torch/torch.h>

#include <cmath>

namespace moeprune {

ExpertChoiceRouterImpl::ExpertChoiceRouterImpl(ExpertChoiceRouterOptions options_)
    : options(std::move(options_)) {
  reset();
}

void ExpertChoiceRouterImpl::reset() {
  TORCH_CHECK(options.d_model() >= 1, "ExpertChoiceRouter: d_model should be >= 1, got ",
              options.d_model());
  TORCH_CHECK(options.num_experts() >= 1, "ExpertChoiceRouter: num_experts should be >= 1, got ",
              options.num_experts());
  TORCH_CHECK(options.capacity_factor() > 0.0,
              "ExpertChoiceRouter: capacity_factor should be > 0, got ", options.capacity_factor());
  const double bound = 1.0 / std::sqrt(static_cast<double>(options.d_model()));
  weight = register_parameter(
      "weight", torch::empty({options.num_experts(), options.d_model()}).uniform_(-bound, bound));
}

void ExpertChoiceRouterImpl::pretty_print(std::ostream& stream) const {
  stream << "moeprune::ExpertChoiceRouter(d_model=" << options.d_model()
         << ", experts=" << options.num_experts()
         << ", capacity_factor=" << options.capacity_factor() << ")";
}

RouterOutput ExpertChoiceRouterImpl::route(const torch::Tensor& tokens,
                                           const torch::Tensor& expert_map,
                                           int64_t num_bank_experts, int64_t /*item_size*/) {
  constexpr const char* who = "ExpertChoiceRouter";
  detail::check_router_input(tokens, options.d_model(), who);
  const auto logits = detail::router_logits(tokens, weight, 0.0, is_training());
  if (options.check_finite()) {
    detail::check_finite_logits(logits, tokens, weight, who);
  }
  const auto probs =
      detail::noisy(logits, options.noise_std(), options.num_experts(), is_training()).softmax(-1);
  RouterOutput out;
  out.plan = functional::expert_choice_route(probs, options.capacity_factor(),
                                             options.capacity_multiple(), options.group_size(),
                                             expert_map, num_bank_experts, options.fixed_rows());
  out.plan.router_logits = logits;
  const auto zero = torch::zeros({}, logits.options());
  out.losses.importance = zero;
  out.losses.load = zero;
  out.losses.load_balance = zero;
  out.losses.z_loss = functional::z_loss(logits);
  return out;
}

void ExpertChoiceRouterImpl::set_capacity_factor(double capacity_factor) {
  TORCH_CHECK(capacity_factor > 0.0, "ExpertChoiceRouter: capacity_factor should be > 0, got ",
              capacity_factor);
  options.capacity_factor(capacity_factor);
}

void ExpertChoiceRouterImpl::set_group_size(int64_t group_size) {
  TORCH_CHECK(group_size >= 0, "ExpertChoiceRouter: group_size should be >= 0, got ", group_size);
  options.group_size(group_size);
}

void ExpertChoiceRouterImpl::drop_columns(const std::vector<int64_t>& rows) {
  detail::keep_router_rows(weight, rows, "ExpertChoiceRouter");
  options.num_experts(static_cast<int64_t>(rows.size()));
}

}  // namespace moeprune
