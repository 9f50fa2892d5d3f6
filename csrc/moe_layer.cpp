#include <moeprune/moe_layer.h>

#include <moeprune/ensemble_router.h>
#include <moeprune/expert_choice_router.h>
#include <moeprune/ops.h>
#include <moeprune/top_k_router.h>

#include <torch/torch.h>

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
  experts_ = register_module("experts", ExpertBank(bank_options));
  if (!held.empty() && static_cast<int64_t>(held.size()) != o.num_experts()) {
    experts_->keep_experts(held);
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
  if (!experts_->holds_all()) {
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

void MoELayerImpl::keep_experts(const std::vector<int64_t>& experts) {
  TORCH_CHECK(static_cast<int64_t>(experts.size()) >= router_->min_bank_experts(),
              "MoELayer: keeping ", experts.size(), " experts, the router needs at least ",
              router_->min_bank_experts());
  experts_->keep_experts(experts);
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
