#include <moeprune/moe_layer.h>

#include <moeprune/ensemble_router.h>
#include <moeprune/expert_choice_router.h>
#include <moeprune/ops.h>
#include <moeprune/top_k_router.h>

#include <torch/torch.h>

#include <algorithm>

namespace moeprune {

using functional::AuxLossWeights;
using functional::CapacityMode;
using functional::TopKRoutingOptions;

std::vector<std::string> MoELayerOptions::preset_names() {
  return {"vmoe", "e3moe", "expert_choice", "switch", "mixtral"};
}

MoELayerOptions MoELayerOptions::preset(const std::string& name, int64_t d_model,
                                        int64_t hidden_dim, int64_t num_experts) {
  MoELayerOptions o(d_model, hidden_dim, num_experts);
  if (name == "vmoe") {
    // Riquelme et al. 2021: top-2 of a softmax over E, noise std 1/E, capacity factor 1.05 at
    // pre-training (1.5 for fine-tuning/evaluation), importance + load losses at 0.005 each.
    o.routing(TopKRoutingOptions(2).capacity_mode(CapacityMode::kFactor).capacity_factor(1.05))
        .noise_std(1.0)
        .activation(ExpertActivation::kGeluTanh)
        .aux_loss_weights(AuxLossWeights().importance(0.005).load(0.005));
  } else if (name == "e3moe") {
    // Allingham et al. 2021: 2 members, top-1 within a member, V-MoE's noise and losses.
    o.router(RouterKind::kEnsemble)
        .ensemble_size(2)
        .routing(TopKRoutingOptions(1).capacity_mode(CapacityMode::kFactor).capacity_factor(1.05))
        .noise_std(1.0)
        .activation(ExpertActivation::kGeluTanh)
        .aux_loss_weights(AuxLossWeights().importance(0.005).load(0.005));
  } else if (name == "expert_choice") {
    // Zhou et al. 2022, EC-CF2: each expert takes 2T/E tokens; no auxiliary loss.
    o.router(RouterKind::kExpertChoice)
        .routing(TopKRoutingOptions(1).capacity_mode(CapacityMode::kFactor).capacity_factor(2.0))
        .activation(ExpertActivation::kGeluTanh);
  } else if (name == "switch") {
    // HF SwitchTransformers (4.x): top-1, expert_capacity 64 per sequence, jitter 0.01, ReLU
    // experts without bias, z-loss and load balance at 0.001.
    o.routing(TopKRoutingOptions(1).capacity_mode(CapacityMode::kFixed).expert_capacity(64))
        .group_per_item(true)
        .jitter(0.01)
        .activation(ExpertActivation::kRelu)
        .expert_bias(false)
        .aux_loss_weights(AuxLossWeights().load_balance(0.001).z_loss(0.001));
  } else if (name == "mixtral") {
    // HF Mixtral: softmax in fp32, top-2 renormalised, dropless, SwiGLU experts,
    // router_aux_loss_coef 0.001.
    o.routing(TopKRoutingOptions(2).capacity_mode(CapacityMode::kDropless).renormalize(true))
        .expert_kind(ExpertKind::kGated)
        .activation(ExpertActivation::kSilu)
        .expert_bias(false)
        .aux_loss_weights(AuxLossWeights().load_balance(0.001));
  } else {
    std::string names;
    for (const auto& n : preset_names()) {
      names += (names.empty() ? "" : ", ") + n;
    }
    TORCH_CHECK(false, "MoELayerOptions: unknown preset '", name, "' (known: ", names, ")");
  }
  return o;
}

MoELayerImpl::MoELayerImpl(MoELayerOptions options_) : options(std::move(options_)) {
  reset();
}

void MoELayerImpl::reset() {
  const auto& o = options;
  switch (o.router()) {
    case RouterKind::kTopK: {
      auto r = std::make_shared<TopKRouterImpl>(TopKRouterOptions(o.d_model(), o.num_experts())
                                                    .routing(o.routing())
                                                    .noise_std(o.noise_std())
                                                    .jitter(o.jitter())
                                                    .group_per_item(o.group_per_item()));
      router_ = r.get();
      router_module_ = r;
      break;
    }
    case RouterKind::kExpertChoice: {
      auto r = std::make_shared<ExpertChoiceRouterImpl>(
          ExpertChoiceRouterOptions(o.d_model(), o.num_experts())
              .capacity_factor(o.routing().capacity_factor())
              .capacity_multiple(o.routing().capacity_multiple())
              .group_size(o.routing().group_size())
              .noise_std(o.noise_std()));
      router_ = r.get();
      router_module_ = r;
      break;
    }
    case RouterKind::kEnsemble: {
      auto r = std::make_shared<EnsembleRouterImpl>(
          EnsembleRouterOptions(o.d_model(), o.num_experts(), o.ensemble_size())
              .routing(o.routing())
              .noise_std(o.noise_std()));
      router_ = r.get();
      router_module_ = r;
      break;
    }
  }
  register_module("router", router_module_);
  auto bank_options = ExpertBankOptions(o.num_experts(), o.d_model(), o.hidden_dim())
                          .kind(o.expert_kind())
                          .activation(o.activation())
                          .bias(o.expert_bias());
  // A clone re-runs reset(): keep the subset of experts the original held.
  auto held = experts_ ? experts_->expert_ids() : std::vector<int64_t>{};
  auto groups = experts_ && experts_->is_merged() ? experts_->expert_groups()
                                                  : std::vector<std::vector<int64_t>>{};
  const int64_t rank = experts_ ? experts_->options.rank() : 0;
  experts_ = register_module("experts", ExpertBank(bank_options));
  if (!groups.empty()) {
    experts_->merge_experts(groups);
  } else if (!held.empty() && static_cast<int64_t>(held.size()) != o.num_experts()) {
    experts_->keep_experts(held);
  }
  if (rank > 0) {
    experts_->factorize(rank, /*compute=*/false);
  }
}

void MoELayerImpl::pretty_print(std::ostream& stream) const {
  stream << "moeprune::MoELayer(d_model=" << options.d_model()
         << ", hidden_dim=" << options.hidden_dim() << ", experts=" << experts_->num_held() << "/"
         << options.num_experts() << ")";
}

MoELayerOutput MoELayerImpl::forward(const torch::Tensor& input) {
  TORCH_CHECK(input.dim() >= 2,
              "MoELayer: input should be [..., d_model] with at least 2 dims, got ", input.dim(),
              "-D");
  TORCH_CHECK(input.size(-1) == options.d_model(), "MoELayer: input width ", input.size(-1),
              " does not match d_model = ", options.d_model());
  const int64_t item_size = input.dim() >= 3 ? input.size(-2) : 0;
  const auto tokens = input.reshape({-1, options.d_model()});

  torch::Tensor map;
  int64_t bank_size = -1;
  // A bank smaller than the router (router columns kept) or merged: map router experts to bank
  // rows.
  if (router_->num_experts() != experts_->num_held() || experts_->is_merged()) {
    map = experts_->expert_map(tokens.device());
    bank_size = experts_->num_held();
  }
  auto routed = router_->route(tokens, map, bank_size, item_size);
  auto& plan = routed.plan;

  const auto rows = ops::dispatch(tokens, plan);
  const auto expert_out = experts_->forward(rows, plan.counts());
  const auto weight = plan.combine_weight.to(expert_out.scalar_type());
  const auto combined = ops::combine(expert_out, weight, plan);

  MoELayerOutput out;
  out.output = combined.reshape(input.sizes());
  out.aux_loss = functional::weighted_sum(routed.losses, options.aux_loss_weights());
  out.losses = std::move(routed.losses);
  out.plan = std::move(plan);
  return out;
}

void MoELayerImpl::merge_experts(const std::vector<std::vector<int64_t>>& groups) {
  TORCH_CHECK(dynamic_cast<EnsembleRouterImpl*>(router_) == nullptr,
              "MoELayer: merging E3-MoE experts is not supported (members route separately)");
  TORCH_CHECK(router_->num_experts() == experts_->options.num_experts(),
              "MoELayer: the router's columns were dropped; merging needs the full router");
  TORCH_CHECK(static_cast<int64_t>(groups.size()) >= 1, "MoELayer: merging needs a group");
  experts_->merge_experts(groups);
}

void MoELayerImpl::keep_experts(const std::vector<int64_t>& experts, bool drop_router_columns) {
  TORCH_CHECK(static_cast<int64_t>(experts.size()) >= router_->min_bank_experts(),
              "MoELayer: keeping ", experts.size(), " experts, the router needs at least ",
              router_->min_bank_experts());
  if (auto* ensemble = dynamic_cast<EnsembleRouterImpl*>(router_)) {
    // E3-MoE prunes within members: each member keeps at least its k experts.
    const int64_t M = ensemble->options.ensemble_size();
    const int64_t per_member = ensemble->options.num_experts() / M;
    for (int64_t m = 0; m < M; ++m) {
      const auto in_member = std::count_if(experts.begin(), experts.end(), [&](int64_t e) {
        return e >= m * per_member && e < (m + 1) * per_member;
      });
      TORCH_CHECK(in_member >= ensemble->options.routing().k(), "MoELayer: ensemble member ", m,
                  " would keep ", in_member,
                  " experts, fewer than its k = ", ensemble->options.routing().k());
    }
  }
  if (!drop_router_columns) {
    TORCH_CHECK(router_->num_experts() == experts_->options.num_experts(),
                "MoELayer: the router's columns were already dropped; keep dropping them");
    experts_->keep_experts(experts);
    return;
  }
  TORCH_CHECK(router_->num_experts() == experts_->num_held(),
              "MoELayer: dropping router columns needs a router and bank of one size (",
              router_->num_experts(), " vs ", experts_->num_held(), ")");
  auto* ensemble = dynamic_cast<EnsembleRouterImpl*>(router_);
  TORCH_CHECK(ensemble == nullptr,
              "MoELayer: an ensemble router keeps its columns (prune within members instead)");
  // Router rows of the kept experts, by their position among the experts the bank holds.
  const auto& held = experts_->expert_ids();
  std::vector<int64_t> rows;
  for (const int64_t id : experts) {
    const auto it = std::lower_bound(held.begin(), held.end(), id);
    TORCH_CHECK(it != held.end() && *it == id, "MoELayer: expert ", id, " is not in the bank");
    rows.push_back(it - held.begin());
  }
  std::sort(rows.begin(), rows.end());
  const int64_t new_e = static_cast<int64_t>(rows.size());
  if (auto* r = dynamic_cast<TopKRouterImpl*>(router_)) {
    TORCH_CHECK(r->options.routing().k() <= new_e, "MoELayer: keeping ", new_e,
                " experts, fewer than k = ", r->options.routing().k());
    r->options.num_experts(new_e);
    r->options.routing().renormalize(true);
  } else if (auto* r = dynamic_cast<ExpertChoiceRouterImpl*>(router_)) {
    r->options.num_experts(new_e);
  }
  experts_->keep_experts(experts);
  torch::NoGradGuard no_grad;
  auto weight = router_->router_weight();
  weight.set_data(weight.index_select(0, torch::tensor(rows, torch::kLong).to(weight.device())));
  weight.mutable_grad() = torch::Tensor();
}

void MoELayerImpl::set_capacity_factor(double capacity_factor) {
  TORCH_CHECK(capacity_factor > 0.0, "MoELayer: capacity_factor should be > 0, got ",
              capacity_factor);
  options.routing().capacity_factor(capacity_factor);
  if (auto* r = dynamic_cast<TopKRouterImpl*>(router_)) {
    r->options.routing().capacity_factor(capacity_factor);
  } else if (auto* r = dynamic_cast<ExpertChoiceRouterImpl*>(router_)) {
    r->options.capacity_factor(capacity_factor);
  } else if (auto* r = dynamic_cast<EnsembleRouterImpl*>(router_)) {
    r->options.routing().capacity_factor(capacity_factor);
  }
}

void MoELayerImpl::set_group_size(int64_t group_size) {
  TORCH_CHECK(group_size >= 0, "MoELayer: group_size should be >= 0, got ", group_size);
  options.routing().group_size(group_size);
  if (auto* r = dynamic_cast<TopKRouterImpl*>(router_)) {
    r->options.routing().group_size(group_size);
  } else if (auto* r = dynamic_cast<ExpertChoiceRouterImpl*>(router_)) {
    r->options.group_size(group_size);
  } else if (auto* r = dynamic_cast<EnsembleRouterImpl*>(router_)) {
    r->options.routing().group_size(group_size);
  }
}

}  // namespace moeprune
