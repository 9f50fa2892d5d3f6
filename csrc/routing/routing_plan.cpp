#include <moeprune/routing/routing_plan.h>

#include <torch/torch.h>

namespace moeprune {

std::vector<int64_t> RoutingPlan::counts() const {
  auto host = expert_counts.to(torch::kCPU, torch::kLong).contiguous();
  return std::vector<int64_t>(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + host.numel());
}

double RoutingPlan::dropped_fraction() const {
  const auto used = expert_index.ge(0).sum().item<int64_t>();
  if (used == 0) {
    return 0.0;
  }
  return static_cast<double>(used - num_kept_rows()) / static_cast<double>(used);
}

int64_t RoutingPlan::num_kept_rows() const {
  if (!fixed_rows) {
    return num_rows();
  }
  return expert_offsets[-1].item<int64_t>();
}

RoutingPlan RoutingPlan::compact() const {
  if (!fixed_rows) {
    return *this;
  }
  RoutingPlan out = *this;
  out.row_slot = row_slot.narrow(0, 0, num_kept_rows()).clone();
  out.fixed_rows = false;
  return out;
}

double RoutingPlan::unrouted_fraction() const {
  if (num_tokens() == 0) {
    return 0.0;
  }
  const auto unrouted = kept().any(1).logical_not().sum().item<int64_t>();
  return static_cast<double>(unrouted) / static_cast<double>(num_tokens());
}

RoutingPlan RoutingPlan::to(const torch::Device& device) const {
  RoutingPlan out = *this;
  for (auto* t : {&out.expert_index, &out.combine_weight, &out.slot_row, &out.row_slot,
                  &out.expert_counts, &out.expert_offsets, &out.router_logits, &out.router_probs}) {
    if (t->defined()) {
      *t = t->to(device);
    }
  }
  return out;
}

}  // namespace moeprune
