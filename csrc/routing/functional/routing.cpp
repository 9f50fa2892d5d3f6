#include <moeprune/routing/functional/routing.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace moeprune::functional {
namespace {

using torch::indexing::Slice;

// Tokens per group, checking that groups tile the tokens.
int64_t resolve_group_size(int64_t num_tokens, int64_t group_size, const char* who) {
  TORCH_CHECK(group_size >= 0, who, ": group_size should be >= 0 (0: one group), got ", group_size);
  if (group_size == 0 || num_tokens == 0) {
    return std::max<int64_t>(num_tokens, 1);
  }
  TORCH_CHECK(num_tokens % group_size == 0, who, ": ", num_tokens,
              " tokens do not split into routing groups of ", group_size);
  return group_size;
}

void check_probs(const torch::Tensor& probs, const char* who) {
  TORCH_CHECK(probs.dim() == 2, who, ": probs should be a 2-D [tokens, experts] tensor, got ",
              probs.dim(), "-D");
  TORCH_CHECK(probs.size(1) >= 1, who, ": probs has no experts");
  TORCH_CHECK(probs.is_floating_point(), who, ": probs should be floating point, got ",
              probs.scalar_type());
}

// Bank expert of each router expert, and the bank size.
std::pair<torch::Tensor, int64_t> resolve_map(const torch::Tensor& expert_map, int64_t E,
                                              int64_t num_bank_experts, const torch::Device& dev,
                                              const char* who) {
  if (!expert_map.defined()) {
    return {torch::arange(E, torch::TensorOptions().dtype(torch::kLong).device(dev)), E};
  }
  TORCH_CHECK(expert_map.dim() == 1 && expert_map.size(0) == E, who, ": expert_map should be [", E,
              "], got ", expert_map.sizes());
  TORCH_CHECK(expert_map.scalar_type() == torch::kLong, who, ": expert_map should be int64, got ",
              expert_map.scalar_type());
  TORCH_CHECK(num_bank_experts >= 1, who,
              ": num_bank_experts should be >= 1 with an expert_map, got ", num_bank_experts);
  return {expert_map.to(dev), num_bank_experts};
}

RoutingPlan empty_plan(const torch::Tensor& probs, int64_t K, int64_t num_bank_experts) {
  const auto opts = torch::TensorOptions().dtype(torch::kLong).device(probs.device());
  RoutingPlan plan;
  plan.expert_index = torch::empty({0, K}, opts);
  plan.combine_weight = torch::empty({0, K}, probs.options());
  plan.slot_row = torch::empty({0, K}, opts);
  plan.row_slot = torch::empty({0}, opts);
  plan.expert_counts = torch::zeros({num_bank_experts}, opts);
  plan.expert_offsets = torch::zeros({num_bank_experts + 1}, opts);
  plan.router_probs = probs;
  return plan;
}

}  // namespace

int64_t capacity_from_factor(int64_t group_size, int64_t k, double capacity_factor,
                             int64_t num_experts, int64_t multiple) {
  TORCH_CHECK(capacity_factor > 0.0 && std::isfinite(capacity_factor),
              "capacity_factor should be > 0, got ", capacity_factor);
  TORCH_CHECK(num_experts >= 1, "num_experts should be >= 1, got ", num_experts);
  auto capacity = static_cast<int64_t>(
      std::ceil(static_cast<double>(group_size * k) * capacity_factor / num_experts));
  capacity = std::max<int64_t>(capacity, 1);
  if (multiple > 1) {
    capacity += (multiple - capacity % multiple) % multiple;
  }
  return capacity;
}

void assign_rows(RoutingPlan& plan, const torch::Tensor& bank_expert, const torch::Tensor& kept,
                 const torch::Tensor& router_order, int64_t num_bank_experts, bool regroup,
                 int64_t max_rows) {
  const auto opts = torch::TensorOptions().dtype(torch::kLong).device(bank_expert.device());
  auto order = router_order;
  if (regroup) {
    // Several router experts may share a bank expert (merged experts), in any id order: a
    // stable sort by bank expert makes each bank expert's rows one block, router order within.
    const auto bank_in_order = bank_expert.reshape({-1}).index_select(0, order);
    order = order.index_select(
        0, std::get<1>(bank_in_order.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false)));
  }
  const auto kept_in_order = kept.reshape({-1}).index_select(0, order);
  plan.slot_row = torch::full(bank_expert.sizes(), -1, opts);
  if (max_rows < 0) {
    plan.row_slot = order.masked_select(kept_in_order);  // its size is read from the device
    const int64_t R = plan.row_slot.size(0);
    plan.slot_row.view({-1}).index_put_({plan.row_slot}, torch::arange(R, opts));
  } else {
    // Fixed size: a kept slot's row is the number of kept slots before it in `order` (a scan);
    // the others write their slot id into a discard row past the end, so every index_put_ has
    // the same number of elements and nothing depends on the kept count.
    const auto kept_long = kept_in_order.to(torch::kLong);
    const auto row_in_order = kept_long.cumsum(0) - kept_long;
    plan.slot_row.view({-1}).index_put_({order}, torch::where(kept_in_order, row_in_order, -1));
    auto row_slot = torch::full({max_rows + 1}, -1, opts);
    row_slot.index_put_({torch::where(kept_in_order, row_in_order, max_rows)}, order);
    plan.row_slot = row_slot.narrow(0, 0, max_rows).clone();
    plan.fixed_rows = true;
  }
  // Rows per bank expert: a histogram of E_bank bins (a fixed size, unlike CUDA's bincount, whose
  // output size is read from the device), then the exclusive scan.
  plan.expert_counts = torch::zeros({num_bank_experts}, opts)
                           .scatter_add_(0, bank_expert.reshape({-1}).clamp_min(0),
                                         kept.reshape({-1}).to(torch::kLong));
  plan.expert_offsets = torch::zeros({num_bank_experts + 1}, opts);
  plan.expert_offsets.index_put_({Slice(1, torch::indexing::None)}, plan.expert_counts.cumsum(0));
}

namespace {

// Capacity per expert and group for token choice (-1: dropless).
int64_t token_choice_capacity(const TopKRoutingOptions& options, int64_t S, int64_t E,
                              const char* who) {
  switch (options.capacity_mode()) {
    case CapacityMode::kFactor:
      return capacity_from_factor(S, options.k(), options.capacity_factor(), E,
                                  options.capacity_multiple());
    case CapacityMode::kFixed:
      TORCH_CHECK(options.expert_capacity() >= 1, who,
                  ": expert_capacity should be >= 1 for fixed capacity, got ",
                  options.expert_capacity());
      return options.expert_capacity();
    case CapacityMode::kDropless:
      break;
  }
  return -1;
}

// Lays out token-choice slots once each token's experts `top_e` [T, k] and weights `top_p`
// [T, k] (in choice order) are known: capacity positions, drops and buffer rows.
RoutingPlan lay_out_choices(const torch::Tensor& probs, const torch::Tensor& top_e,
                            const torch::Tensor& top_p, const TopKRoutingOptions& options,
                            const torch::Tensor& expert_map, int64_t num_bank_experts,
                            const char* who) {
  const int64_t T = probs.size(0), E = probs.size(1), k = top_e.size(1);
  auto [map, bank_size] = resolve_map(expert_map, E, num_bank_experts, probs.device(), who);
  const int64_t S = resolve_group_size(T, options.group_size(), who);
  const int64_t capacity = token_choice_capacity(options, S, E, who);
  if (T == 0) {
    auto plan = empty_plan(probs, k, bank_size);
    plan.capacity = capacity;
    plan.group_size = S;
    plan.fixed_rows = options.fixed_rows();
    return plan;
  }
  const int64_t G = T / S;
  const auto lopts = torch::TensorOptions().dtype(torch::kLong).device(probs.device());

  // Rank of each token in its group's service order.
  torch::Tensor rank;
  if (options.batch_priority()) {
    const auto priority = top_p.index({Slice(), 0}).reshape({G, S});
    const auto served = priority.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true);
    rank = torch::empty({G, S}, lopts);
    rank.scatter_(1, std::get<1>(served), torch::arange(S, lopts).expand({G, S}));
  } else {
    rank = torch::arange(S, lopts).expand({G, S});
  }
  rank = rank.reshape({T, 1});
  const auto choice = torch::arange(k, lopts).reshape({1, k});
  const auto group = torch::arange(T, lopts).div(S, "floor").reshape({T, 1});
  // Fill order within (expert, group): choice first, then service rank.
  const auto fill = choice * S + rank;                     // [T, k]
  const auto segment = (top_e * G + group).reshape({-1});  // (expert, group) of each slot
  const auto key = segment * (k * S) + fill.reshape({-1});
  const auto order = std::get<1>(key.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  const auto segment_sorted = segment.index_select(0, order);
  const auto segment_size =
      torch::zeros({E * G}, lopts)
          .scatter_add_(0, segment,
                        torch::ones({T * k}, lopts));  // a fixed-size histogram (no device read)
  const auto segment_start = segment_size.cumsum(0) - segment_size;
  const auto position_sorted =
      torch::arange(T * k, lopts) - segment_start.index_select(0, segment_sorted);
  auto position = torch::empty({T * k}, lopts);
  position.index_put_({order}, position_sorted);
  position = position.reshape({T, k});

  const auto bank_expert = map.index_select(0, top_e.reshape({-1})).reshape({T, k});
  auto kept = bank_expert.ge(0);
  if (capacity > 0) {
    kept = kept.logical_and(position.lt(capacity));
  }

  RoutingPlan plan;
  plan.expert_index = top_e;
  plan.combine_weight = options.renormalize() ? top_p / top_p.sum(1, /*keepdim=*/true) : top_p;
  plan.router_probs = probs;
  plan.capacity = capacity;
  plan.group_size = S;
  // Kept slots are bounded by the slots and, with a capacity, by E * capacity per group.
  const int64_t max_rows = !options.fixed_rows() ? -1
                           : capacity > 0        ? std::min(T * k, E * capacity * G)
                                                 : T * k;
  assign_rows(plan, bank_expert, kept, order, bank_size, expert_map.defined(), max_rows);
  return plan;
}

}  // namespace

RoutingPlan top_k_route(const torch::Tensor& probs, const TopKRoutingOptions& options,
                        const torch::Tensor& expert_map, int64_t num_bank_experts) {
  constexpr const char* who = "top_k_route";
  check_probs(probs, who);
  const int64_t E = probs.size(1), k = options.k();
  TORCH_CHECK(k >= 1 && k <= E, who, ": k should be in [1, E = ", E, "], got k = ", k);
  // Top-k by a stable descending sort, so equal probabilities go to the lower expert id.
  const auto sorted = probs.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true);
  const auto top_p = std::get<0>(sorted).index({Slice(), Slice(0, k)});
  const auto top_e = std::get<1>(sorted).index({Slice(), Slice(0, k)}).contiguous();
  return lay_out_choices(probs, top_e, top_p, options, expert_map, num_bank_experts, who);
}

RoutingPlan route_chosen(const torch::Tensor& probs, const torch::Tensor& expert_index,
                         const torch::Tensor& weight, const TopKRoutingOptions& options,
                         const torch::Tensor& expert_map, int64_t num_bank_experts) {
  constexpr const char* who = "route_chosen";
  check_probs(probs, who);
  const int64_t T = probs.size(0), E = probs.size(1);
  TORCH_CHECK(expert_index.dim() == 2 && expert_index.size(0) == T && expert_index.size(1) >= 1,
              who, ": expert_index should be [", T, ", k], got ", expert_index.sizes());
  TORCH_CHECK(expert_index.scalar_type() == torch::kLong, who,
              ": expert_index should be int64, got ", expert_index.scalar_type());
  TORCH_CHECK(weight.sizes() == expert_index.sizes(), who, ": weight ", weight.sizes(),
              " should have the shape of expert_index ", expert_index.sizes());
  TORCH_CHECK(
      options.fixed_rows() || T == 0 ||
          (expert_index.min().item<int64_t>() >= 0 && expert_index.max().item<int64_t>() < E),
      who, ": expert_index holds an expert outside [0, ", E, ")");
  return lay_out_choices(probs, expert_index.contiguous(), weight, options, expert_map,
                         num_bank_experts, who);
}

RoutingPlan expert_choice_route(const torch::Tensor& probs, double capacity_factor,
                                int64_t capacity_multiple, int64_t group_size,
                                const torch::Tensor& expert_map, int64_t num_bank_experts,
                                bool fixed_rows) {
  constexpr const char* who = "expert_choice_route";
  check_probs(probs, who);
  const int64_t T = probs.size(0), E = probs.size(1);
  auto [map, bank_size] = resolve_map(expert_map, E, num_bank_experts, probs.device(), who);
  const int64_t S = resolve_group_size(T, group_size, who);
  const int64_t capacity =
      std::min(capacity_from_factor(S, 1, capacity_factor, E, capacity_multiple), S);
  if (T == 0) {
    auto plan = empty_plan(probs, E, bank_size);
    plan.capacity = capacity;
    plan.group_size = S;
    plan.fixed_rows = fixed_rows;
    return plan;
  }
  const int64_t G = T / S;
  const auto lopts = torch::TensorOptions().dtype(torch::kLong).device(probs.device());

  // Rank of each token in each expert's preference, per group (stable: earlier token first).
  const auto chosen = std::get<1>(probs.reshape({G, S, E}).sort(/*stable=*/true, /*dim=*/1,
                                                                /*descending=*/true));
  auto rank = torch::empty({G, S, E}, lopts);
  rank.scatter_(1, chosen, torch::arange(S, lopts).reshape({1, S, 1}).expand({G, S, E}));
  rank = rank.reshape({T, E});

  const auto expert = torch::arange(E, lopts).reshape({1, E});
  const auto group = torch::arange(T, lopts).div(S, "floor").reshape({T, 1});
  const auto bank_expert = map.reshape({1, E}).expand({T, E});
  const auto kept = rank.lt(capacity).logical_and(bank_expert.ge(0));
  const auto key = ((expert * G + group) * S + rank).reshape({-1});
  const auto order = std::get<1>(key.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));

  RoutingPlan plan;
  plan.expert_index = torch::where(rank.lt(capacity), expert, -1);
  plan.combine_weight = probs;
  plan.router_probs = probs;
  plan.capacity = capacity;
  plan.group_size = S;
  // Each expert takes at most `capacity` tokens per group.
  assign_rows(plan, bank_expert, kept, order, bank_size, expert_map.defined(),
              fixed_rows ? E * capacity * G : -1);
  return plan;
}

}  // namespace moeprune::functional
