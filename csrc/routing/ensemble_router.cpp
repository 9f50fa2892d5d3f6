#include <moeprune/routing/ensemble_router.h>

#include "routing/router_logits.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

namespace moeprune {

using torch::indexing::Slice;

EnsembleRouterImpl::EnsembleRouterImpl(EnsembleRouterOptions options_)
    : options(std::move(options_)) {
  reset();
}

void EnsembleRouterImpl::reset() {
  const int64_t E = options.num_experts(), M = options.ensemble_size();
  TORCH_CHECK(options.d_model() >= 1, "EnsembleRouter: d_model should be >= 1, got ",
              options.d_model());
  TORCH_CHECK(M >= 1, "EnsembleRouter: ensemble_size should be >= 1, got ", M);
  TORCH_CHECK(E >= M && E % M == 0, "EnsembleRouter: num_experts (", E,
              ") should be a positive multiple of ensemble_size (", M, ")");
  const int64_t k = options.routing().k();
  TORCH_CHECK(k >= 1 && k <= E / M, "EnsembleRouter: k should be in [1, E/M = ", E / M,
              "], got k = ", k);
  const double bound = 1.0 / std::sqrt(static_cast<double>(options.d_model()));
  weight =
      register_parameter("weight", torch::empty({E, options.d_model()}).uniform_(-bound, bound));
}

void EnsembleRouterImpl::pretty_print(std::ostream& stream) const {
  stream << "moeprune::EnsembleRouter(d_model=" << options.d_model()
         << ", experts=" << options.num_experts() << ", members=" << options.ensemble_size()
         << ", k=" << options.routing().k() << ")";
}

RouterOutput EnsembleRouterImpl::route(const torch::Tensor& tokens, const torch::Tensor& expert_map,
                                       int64_t num_bank_experts, int64_t item_size) {
  constexpr const char* who = "EnsembleRouter";
  detail::check_router_input(tokens, options.d_model(), who);
  const int64_t T = tokens.size(0), E = options.num_experts(), M = options.ensemble_size();
  const int64_t Em = E / M, K = options.routing().k();
  const int64_t item = item_size > 0 ? item_size : 1;
  TORCH_CHECK(T % (item * M) == 0, who, ": ", T, " tokens do not hold whole items of ", item,
              " tokens for each of the ", M, " members");
  auto member_routing = options.routing();
  // The members' plans are concatenated by their row counts: exact layouts only.
  member_routing.fixed_rows(false);
  if (member_routing.group_size() > 0) {
    TORCH_CHECK(member_routing.group_size() % M == 0, who, ": group_size ",
                member_routing.group_size(), " should be a multiple of ensemble_size ", M);
    member_routing.group_size(member_routing.group_size() / M);
  }
  const auto lopts = torch::TensorOptions().dtype(torch::kLong).device(tokens.device());
  torch::Tensor map = expert_map;
  int64_t bank_size = num_bank_experts;
  if (!map.defined()) {
    map = torch::arange(E, lopts);
    bank_size = E;
  }
  TORCH_CHECK(map.dim() == 1 && map.size(0) == E, who, ": expert_map should be [", E, "], got ",
              map.sizes());

  const auto logits = detail::router_logits(tokens, weight, 0.0, is_training());
  if (options.check_finite()) {
    detail::check_finite_logits(logits, tokens, weight, who);
  }
  const auto token_ids = torch::arange(T, lopts).reshape({T / (item * M), M, item});

  RouterOutput out;
  auto& plan = out.plan;
  plan.expert_index = torch::full({T, K}, -1, lopts);
  plan.combine_weight = torch::zeros({T, K}, logits.options());
  plan.slot_row = torch::full({T, K}, -1, lopts);
  plan.expert_counts = torch::zeros({bank_size}, lopts);
  plan.router_logits =
      torch::full({T, E}, -std::numeric_limits<float>::infinity(), logits.options());
  plan.router_probs = torch::zeros({T, E}, logits.options());
  std::vector<torch::Tensor> row_slots;
  int64_t rows_before = 0;
  const auto zero = torch::zeros({}, logits.options());
  out.losses = {zero, zero, zero, zero};

  for (int64_t m = 0; m < M; ++m) {
    const auto ids = token_ids.select(1, m).reshape({-1});
    const auto block = Slice(m * Em, (m + 1) * Em);
    const auto member_logits = logits.index_select(0, ids).index({Slice(), block});
    const auto member_noisy = detail::noisy(member_logits, options.noise_std(), Em, is_training());
    const auto member_probs = member_noisy.softmax(-1);
    const auto p = functional::top_k_route(member_probs, member_routing,
                                           map.index({block}).contiguous(), bank_size);

    plan.expert_index.index_put_({ids}, p.expert_index + m * Em);
    plan.combine_weight = plan.combine_weight.index_put({ids}, p.combine_weight);
    plan.slot_row.index_put_({ids}, torch::where(p.slot_row.ge(0), p.slot_row + rows_before, -1));
    row_slots.push_back(ids.index_select(0, p.row_slot.div(K, "floor")) * K +
                        p.row_slot.remainder(K));
    plan.expert_counts += p.expert_counts;
    rows_before += p.num_rows();
    plan.router_logits.index_put_({ids, block}, member_logits);
    plan.router_probs = plan.router_probs.index_put(
        {ids.unsqueeze(1), torch::arange(m * Em, (m + 1) * Em, lopts).unsqueeze(0)}, member_probs);
    plan.capacity = p.capacity;
    plan.group_size = p.group_size;

    // Losses per member (vmoe vmaps the router over members), averaged below.
    const int64_t S = p.group_size;
    const auto clean_probs = member_logits.softmax(-1);
    out.losses.importance = out.losses.importance + functional::importance_loss(clean_probs, S);
    if (is_training() && options.noise_std() > 0.0) {
      out.losses.load = out.losses.load + functional::load_loss(member_logits, member_noisy, K,
                                                                options.noise_std() / Em, S);
    }
    out.losses.load_balance =
        out.losses.load_balance + functional::load_balance_loss(clean_probs, p.expert_index, S);
    out.losses.z_loss = out.losses.z_loss + functional::z_loss(member_logits);
  }
  plan.row_slot = torch::cat(row_slots);
  plan.expert_offsets = torch::zeros({bank_size + 1}, lopts);
  plan.expert_offsets.index_put_({Slice(1, torch::indexing::None)}, plan.expert_counts.cumsum(0));
  plan.group_size *= M;
  for (auto* loss :
       {&out.losses.importance, &out.losses.load, &out.losses.load_balance, &out.losses.z_loss}) {
    *loss = *loss / static_cast<double>(M);
  }
  return out;
}

void EnsembleRouterImpl::set_capacity_factor(double capacity_factor) {
  TORCH_CHECK(capacity_factor > 0.0, "EnsembleRouter: capacity_factor should be > 0, got ",
              capacity_factor);
  options.routing().capacity_factor(capacity_factor);
}

void EnsembleRouterImpl::set_group_size(int64_t group_size) {
  TORCH_CHECK(group_size >= 0, "EnsembleRouter: group_size should be >= 0, got ", group_size);
  options.routing().group_size(group_size);
}

void EnsembleRouterImpl::drop_columns(const std::vector<int64_t>& /*rows*/) {
  TORCH_CHECK(
      false, "EnsembleRouter: an ensemble router keeps its columns (prune within members instead)");
}

}  // namespace moeprune
