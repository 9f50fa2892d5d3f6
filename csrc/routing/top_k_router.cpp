#include <moeprune/routing/top_k_router.h>

#include "routing/router_logits.h"

#include <torch/torch.h>

#include <cmath>

namespace moeprune {

TopKRouterImpl::TopKRouterImpl(TopKRouterOptions options_) : options(std::move(options_)) {
  reset();
}

void TopKRouterImpl::reset() {
  TORCH_CHECK(options.d_model() >= 1, "TopKRouter: d_model should be >= 1, got ",
              options.d_model());
  TORCH_CHECK(options.num_experts() >= 1, "TopKRouter: num_experts should be >= 1, got ",
              options.num_experts());
  const int64_t k = options.routing().k();
  TORCH_CHECK(k >= 1 && k <= options.num_experts(),
              "TopKRouter: k should be in [1, E = ", options.num_experts(), "], got k = ", k);
  if (options.routing().capacity_mode() == functional::CapacityMode::kFactor) {
    TORCH_CHECK(options.routing().capacity_factor() > 0.0,
                "TopKRouter: capacity_factor should be > 0, got ",
                options.routing().capacity_factor());
  }
  const double bound = 1.0 / std::sqrt(static_cast<double>(options.d_model()));
  weight = register_parameter(
      "weight", torch::empty({options.num_experts(), options.d_model()}).uniform_(-bound, bound));
}

void TopKRouterImpl::pretty_print(std::ostream& stream) const {
  stream << "moeprune::TopKRouter(d_model=" << options.d_model()
         << ", experts=" << options.num_experts() << ", k=" << options.routing().k() << ")";
}

RouterOutput TopKRouterImpl::route(const torch::Tensor& tokens, const torch::Tensor& expert_map,
                                   int64_t num_bank_experts, int64_t item_size) {
  constexpr const char* who = "TopKRouter";
  detail::check_router_input(tokens, options.d_model(), who);
  const auto logits = detail::router_logits(tokens, weight, options.jitter(), is_training());
  if (options.check_finite()) {
    detail::check_finite_logits(logits, tokens, weight, who);
  }
  const auto noisy_logits =
      detail::noisy(logits, options.noise_std(), options.num_experts(), is_training());
  const auto probs = noisy_logits.softmax(-1);

  RouterOutput out;
  auto routing = options.routing();
  if (options.group_per_item() && item_size > 0) {
    routing.group_size(item_size);
  }
  out.plan = functional::top_k_route(probs, routing, expert_map, num_bank_experts);
  out.plan.router_logits = logits;
  const int64_t S = out.plan.group_size;
  const auto clean_probs = noisy_logits.is_same(logits) ? probs : logits.softmax(-1);
  out.losses.importance = functional::importance_loss(clean_probs, S);
  const bool noisy_routing = is_training() && options.noise_std() > 0.0;
  out.losses.load = noisy_routing
                        ? functional::load_loss(logits, noisy_logits, options.routing().k(),
                                                options.noise_std() / options.num_experts(), S)
                        : torch::zeros({}, logits.options());
  out.losses.load_balance = functional::load_balance_loss(clean_probs, out.plan.expert_index, S);
  out.losses.z_loss = functional::z_loss(logits);
  return out;
}

void TopKRouterImpl::set_capacity_factor(double capacity_factor) {
  TORCH_CHECK(capacity_factor > 0.0, "TopKRouter: capacity_factor should be > 0, got ",
              capacity_factor);
  options.routing().capacity_factor(capacity_factor);
}

void TopKRouterImpl::set_group_size(int64_t group_size) {
  TORCH_CHECK(group_size >= 0, "TopKRouter: group_size should be >= 0, got ", group_size);
  options.routing().group_size(group_size);
}

void TopKRouterImpl::drop_columns(const std::vector<int64_t>& rows) {
  const int64_t k = options.routing().k();
  TORCH_CHECK(static_cast<int64_t>(rows.size()) >= k, "TopKRouter: keeping ", rows.size(),
              " experts, fewer than k = ", k);
  detail::keep_router_rows(weight, rows, "TopKRouter");
  options.num_experts(static_cast<int64_t>(rows.size()));
  options.routing().renormalize(true);
}

}  // namespace moeprune
