#include <moeprune/layers/moe_layer.h>

#include <moeprune/ops/ops.h>
#include <moeprune/routing/ensemble_router.h>
#include <moeprune/routing/expert_choice_router.h>
#include <moeprune/routing/group_limited_router.h>
#include <moeprune/routing/top_k_router.h>

#include <torch/torch.h>

#include <algorithm>

namespace moeprune {

using functional::AuxLossWeights;
using functional::CapacityMode;
using functional::TopKRoutingOptions;

std::vector<std::string> MoELayerOptions::preset_names() {
  return {"vmoe",
          "e3moe",
          "expert_choice",
          "switch",
          "top_k_gated",
          "group_limited_softmax",
          "group_limited_sigmoid"};
}

MoELayerOptions MoELayerOptions::preset(const std::string& name, int64_t d_model,
                                        int64_t hidden_dim, int64_t num_experts) {
  MoELayerOptions o(d_model, hidden_dim, num_experts);
  if (name == "vmoe") {
    // Riquelme et al. 2021: top-2 of a softmax over E, noise std 1/E, capacity factor 1.05 at
    // pre-training (1.5 for fine-tuning/evaluation), importance + load losses at 0.005 each.
    o.router(
         TopKRouterConfig()
             .routing(
                 TopKRoutingOptions(2).capacity_mode(CapacityMode::kFactor).capacity_factor(1.05))
             .noise_std(1.0))
        .activation(ExpertActivation::kGeluTanh)
        .aux_loss_weights(AuxLossWeights().importance(0.005).load(0.005));
  } else if (name == "e3moe") {
    // Allingham et al. 2021: 2 members, top-1 within a member, V-MoE's noise and losses.
    o.router(
         EnsembleRouterConfig()
             .members(2)
             .routing(
                 TopKRoutingOptions(1).capacity_mode(CapacityMode::kFactor).capacity_factor(1.05))
             .noise_std(1.0))
        .activation(ExpertActivation::kGeluTanh)
        .aux_loss_weights(AuxLossWeights().importance(0.005).load(0.005));
  } else if (name == "expert_choice") {
    // Zhou et al. 2022, EC-CF2: each expert takes 2T/E tokens; no auxiliary loss.
    o.router(ExpertChoiceRouterConfig().capacity_factor(2.0).capacity_multiple(4))
        .activation(ExpertActivation::kGeluTanh);
  } else if (name == "switch") {
    // HF SwitchTransformers (4.x): top-1, expert_capacity 64 per sequence, jitter 0.01, ReLU
    // experts without bias, z-loss and load balance at 0.001.
    o.router(
         TopKRouterConfig()
             .routing(TopKRoutingOptions(1).capacity_mode(CapacityMode::kFixed).expert_capacity(64))
             .group_per_item(true)
             .jitter(0.01))
        .activation(ExpertActivation::kRelu)
        .expert_bias(false)
        .aux_loss_weights(AuxLossWeights().load_balance(0.001).z_loss(0.001));
  } else if (name == "top_k_gated") {
    // Mixtral's layer (transformers' MixtralSparseMoeBlock), which the Qwen-MoE, OLMoE and
    // DeepSeek-MoE records reuse: softmax in fp32, top-2 renormalised, dropless, SwiGLU experts,
    // load-balancing loss 0.001.
    o.router(TopKRouterConfig().routing(
                 TopKRoutingOptions(2).capacity_mode(CapacityMode::kDropless).renormalize(true)))
        .expert_kind(ExpertKind::kGated)
        .activation(ExpertActivation::kSilu)
        .expert_bias(false)
        .aux_loss_weights(AuxLossWeights().load_balance(0.001));
  } else if (name == "group_limited_softmax") {
    // transformers' DeepseekV2MoEGate (topk_method group_limited_greedy): softmax scores,
    // groups ranked by their best expert, no renormalisation; n_group, topk_group, k and
    // routed_scaling_factor come from the config (one group here, i.e. greedy top-k).
    o.router(GroupLimitedRouterConfig()
                 .routing(TopKRoutingOptions(2).capacity_mode(CapacityMode::kDropless))
                 .groups(GroupLimitedRoutingOptions()
                             .score_function(ScoreFunction::kSoftmax)
                             .group_score(GroupScore::kMax)
                             .correction_bias(false)))
        .expert_kind(ExpertKind::kGated)
        .activation(ExpertActivation::kSilu)
        .expert_bias(false);
  } else if (name == "group_limited_sigmoid") {
    // transformers' DeepseekV3TopkRouter (also GLM-4.5's Glm4MoeTopkRouter): sigmoid scores,
    // e_score_correction_bias for selection, groups ranked by the sum of their top two, weights
    // renormalised (norm_topk_prob); k (8 in the released V3), groups and scaling come from
    // the config.
    o.router(GroupLimitedRouterConfig()
                 .routing(
                     TopKRoutingOptions(2).capacity_mode(CapacityMode::kDropless).renormalize(true))
                 .groups(GroupLimitedRoutingOptions()
                             .score_function(ScoreFunction::kSigmoid)
                             .group_score(GroupScore::kTopTwoSum)
                             .correction_bias(true)))
        .expert_kind(ExpertKind::kGated)
        .activation(ExpertActivation::kSilu)
        .expert_bias(false);
  } else {
    std::string names;
    for (const auto& n : preset_names()) {
      names += (names.empty() ? "" : ", ") + n;
    }
    TORCH_CHECK(false, "MoELayerOptions: unknown preset '", name, "' (known: ", names, ")");
  }
  return o;
}

functional::TopKRoutingOptions& MoELayerOptions::routing() {
  auto* routing = token_routing(router_);
  TORCH_CHECK(routing != nullptr, "MoELayerOptions: the ", router_name(router_),
              " router has no token-choice routing (k, capacity mode); set its "
              "ExpertChoiceRouterConfig through router_as");
  return *routing;
}

const functional::TopKRoutingOptions& MoELayerOptions::routing() const {
  return const_cast<MoELayerOptions*>(this)->routing();
}

namespace {

// Each router module from its config, with the layer's sizes and switches.
template <class Impl, class ModuleOptions>
RouterHandle handle_of(ModuleOptions options) {
  auto router = std::make_shared<Impl>(std::move(options));
  RouterHandle h;
  h.router = router.get();
  h.module = router;
  return h;
}

}  // namespace

RouterHandle make_router(const MoELayerOptions& o) {
  const int64_t d = o.d_model(), E = o.num_experts();
  if (const auto* c = std::get_if<TopKRouterConfig>(&o.router())) {
    return handle_of<TopKRouterImpl>(
        TopKRouterOptions(d, E)
            .routing(TopKRoutingOptions(c->routing()).fixed_rows(o.sync_free()))
            .noise_std(c->noise_std())
            .jitter(c->jitter())
            .group_per_item(c->group_per_item())
            .check_finite(o.check_finite()));
  }
  if (const auto* c = std::get_if<ExpertChoiceRouterConfig>(&o.router())) {
    return handle_of<ExpertChoiceRouterImpl>(ExpertChoiceRouterOptions(d, E)
                                                 .capacity_factor(c->capacity_factor())
                                                 .capacity_multiple(c->capacity_multiple())
                                                 .group_size(c->group_size())
                                                 .noise_std(c->noise_std())
                                                 .check_finite(o.check_finite())
                                                 .fixed_rows(o.sync_free()));
  }
  if (const auto* c = std::get_if<EnsembleRouterConfig>(&o.router())) {
    return handle_of<EnsembleRouterImpl>(EnsembleRouterOptions(d, E, c->members())
                                             .routing(c->routing())
                                             .noise_std(c->noise_std())
                                             .check_finite(o.check_finite()));
  }
  static_assert(std::variant_size_v<RouterConfig> == 4,
                "make_router: a router config it cannot build");
  const auto& c = std::get<GroupLimitedRouterConfig>(o.router());
  return handle_of<GroupLimitedRouterImpl>(
      GroupLimitedRouterOptions(d, E)
          .routing(TopKRoutingOptions(c.routing()).fixed_rows(o.sync_free()))
          .groups(c.groups())
          .check_finite(o.check_finite()));
}

MoELayerImpl::MoELayerImpl(MoELayerOptions options_) : options(std::move(options_)) {
  reset();
}

void MoELayerImpl::reset() {
  TORCH_CHECK(!options.sync_free() || !options.check_finite(),
              "MoELayer: sync_free needs check_finite(false) (the finite checks read a flag back "
              "from the device)");
  TORCH_CHECK(
      !options.sync_free() || !std::holds_alternative<EnsembleRouterConfig>(options.router()),
      "MoELayer: sync_free is not available with the ensemble router (E3-MoE joins its "
      "members' plans by their row counts, read from the device)");
  // A clone re-runs reset(): rebuild the pruning, merging and factorising the original had.
  const auto previous = experts_ ? std::optional<MoELayerState>(local_state()) : std::nullopt;
  capture_ = nullptr;
  auto handle = make_router(options);
  router_ = handle.router;
  router_module_ = register_module("router", handle.module);
  experts_ = register_module(
      "experts",
      ExpertBank(ExpertBankOptions(options.num_experts(), options.d_model(), options.hidden_dim())
                     .kind(options.expert_kind())
                     .activation(options.activation())
                     .bias(options.expert_bias())));
  if (previous && !previous->is_plain()) {
    // A clone of an expert-parallel layer rebuilds this process's share of the bank first.
    auto exchange = std::move(exchange_);
    exchange_ = nullptr;
    restore(*previous);
    exchange_ = std::move(exchange);
  }
}

void MoELayerImpl::pretty_print(std::ostream& stream) const {
  stream << "moeprune::MoELayer(d_model=" << options.d_model()
         << ", hidden_dim=" << options.hidden_dim() << ", experts=" << experts_->num_held() << "/"
         << options.num_experts() << ")";
}

RouterOutput MoELayerImpl::route(const torch::Tensor& tokens) {
  return route_items(tokens, 0);
}

RouterOutput MoELayerImpl::route_items(const torch::Tensor& tokens, int64_t item_size) {
  if (exchange_) {
    // Buffer positions over every process's experts.
    return router_->route(tokens, exchange_->expert_map(tokens.device()),
                          exchange_->num_positions(), item_size);
  }
  torch::Tensor map;
  int64_t bank_size = -1;
  // A bank smaller than the router (router columns kept) or merged: map router experts to bank
  // rows.
  if (router_->num_experts() != experts_->num_held() || experts_->is_merged()) {
    map = experts_->expert_map(tokens.device());
    bank_size = experts_->num_held();
  }
  return router_->route(tokens, map, bank_size, item_size);
}

void MoELayerImpl::check_finite_experts(const torch::Tensor& expert_out,
                                        const std::vector<int64_t>& counts) const {
  if (torch::isfinite(expert_out).all().item<bool>()) {
    return;
  }
  // The router checked the tokens, so an expert made the NaN or inf: find the first such row's
  // expert, then which of its parameters (bank slice) are not finite.
  const auto bad_rows = torch::logical_not(torch::isfinite(expert_out)).any(1).nonzero();
  const int64_t row = bad_rows[0][0].item<int64_t>();
  int64_t local = 0;
  for (int64_t end = counts[0]; row >= end; end += counts[static_cast<size_t>(++local)]) {
  }
  std::string ids;
  const auto groups = experts_->expert_groups();
  for (const auto id : groups[static_cast<size_t>(local)]) {
    ids += (ids.empty() ? "" : ", ") + std::to_string(id);
  }
  std::string bad_params;
  for (const auto& p : experts_->named_parameters()) {
    const auto& t = p.value();
    if (t.dim() >= 1 && t.size(0) == experts_->num_held() &&
        !torch::isfinite(t.detach()[local]).all().item<bool>()) {
      bad_params += (bad_params.empty() ? "" : ", ") + p.key();
    }
  }
  TORCH_CHECK(false, "MoELayer: expert ", ids, " output NaN or inf (dispatched row ", row,
              ") for finite input; ",
              bad_params.empty() ? "its parameters are finite, so its activations overflowed " +
                                       std::string(c10::toString(expert_out.scalar_type()))
                                 : "its parameters " + bad_params + " hold NaN or inf");
}

MoELayerOutput MoELayerImpl::forward(const torch::Tensor& input) {
  TORCH_CHECK(input.dim() >= 2,
              "MoELayer: input should be [..., d_model] with at least 2 dims, got ", input.dim(),
              "-D");
  TORCH_CHECK(input.size(-1) == options.d_model(), "MoELayer: input width ", input.size(-1),
              " does not match d_model = ", options.d_model());
  const int64_t item_size = input.dim() >= 3 ? input.size(-2) : 0;
  const auto tokens = input.reshape({-1, options.d_model()});

  auto routed = route_items(tokens, item_size);
  auto& plan = routed.plan;

  const auto rows = ops::dispatch(tokens, plan);
  torch::Tensor expert_out;
  if (exchange_) {
    // The finite check of the experts' output needs the bank of every row's expert, which lives
    // on another process: the router's check on the tokens still runs.
    expert_out = exchange_->run(rows, plan.expert_counts, *experts_);
  } else if (options.sync_free()) {
    expert_out = experts_->forward_offsets(rows, plan.expert_offsets);
  } else {
    const auto counts = plan.counts();
    expert_out = experts_->forward(rows, counts);
    if (options.check_finite()) {
      check_finite_experts(expert_out, counts);
    }
  }
  const auto weight = plan.combine_weight.to(expert_out.scalar_type());
  const auto combined = ops::combine(expert_out, weight, plan);

  if (capture_ != nullptr) {
    // Calibration reads the plan's rows on the host: the exact layout.
    capture_->push_back({capture_inputs_ ? tokens.detach() : torch::Tensor(), plan.compact()});
  }
  MoELayerOutput out;
  out.output = combined.reshape(input.sizes());
  out.aux_loss = functional::weighted_sum(routed.losses, options.aux_loss_weights());
  out.losses = std::move(routed.losses);
  out.plan = std::move(plan);
  return out;
}

void MoELayerImpl::set_expert_exchange(std::shared_ptr<ExpertExchange> exchange) {
  TORCH_CHECK(!exchange || !options.sync_free(),
              "MoELayer: a sync_free layer cannot exchange rows with other processes (the "
              "exchange reads the row counts)");
  exchange_ = std::move(exchange);
}

void MoELayerImpl::merge_experts(const std::vector<std::vector<int64_t>>& groups) {
  TORCH_CHECK(!exchange_,
              "MoELayer: the experts are spread over processes; merge before "
              "distributed::shard_experts or after distributed::unshard_experts");
  TORCH_CHECK(router_->can_merge(),
              "MoELayer: this router's experts cannot be merged (E3-MoE members route "
              "separately)");
  TORCH_CHECK(router_->num_experts() == experts_->options.num_experts(),
              "MoELayer: the router's columns were dropped; merging needs the full router");
  TORCH_CHECK(static_cast<int64_t>(groups.size()) >= 1, "MoELayer: merging needs a group");
  experts_->merge_experts(groups);
}

void MoELayerImpl::keep_experts(const std::vector<int64_t>& experts, bool drop_router_columns) {
  TORCH_CHECK(!exchange_,
              "MoELayer: the experts are spread over processes; prune before "
              "distributed::shard_experts or after distributed::unshard_experts");
  TORCH_CHECK(static_cast<int64_t>(experts.size()) >= router_->min_bank_experts(),
              "MoELayer: keeping ", experts.size(), " experts, the router needs at least ",
              router_->min_bank_experts());
  const auto keep = router_->keep_constraint();
  if (keep.members > 1) {
    // E3-MoE prunes within members: each member keeps at least its k experts. A group-limited
    // router's groups also stay equal.
    const char* block = keep.equal_members ? "expert group " : "ensemble member ";
    const int64_t per_member = router_->num_experts() / keep.members;
    int64_t first = -1;
    for (int64_t m = 0; m < keep.members; ++m) {
      const auto in_member = std::count_if(experts.begin(), experts.end(), [&](int64_t e) {
        return e >= m * per_member && e < (m + 1) * per_member;
      });
      TORCH_CHECK(in_member >= keep.min_per_member, "MoELayer: ", block, m, " would keep ",
                  in_member, " experts, fewer than the ", keep.min_per_member, " its router needs");
      first = m == 0 ? in_member : first;
      TORCH_CHECK(!keep.equal_members || in_member == first, "MoELayer: ", block, m, " would keep ",
                  in_member, " experts and group 0 ", first,
                  "; a group-limited router needs equal groups");
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
  TORCH_CHECK(router_->can_drop_columns(),
              "MoELayer: an ensemble router keeps its columns (prune within members instead)");
  // Router rows of the kept experts, by their position among the experts the bank holds.
  std::vector<int64_t> rows;
  for (const int64_t id : experts) {
    rows.push_back(experts_->position_of(id));
  }
  std::sort(rows.begin(), rows.end());
  TORCH_CHECK(static_cast<int64_t>(rows.size()) >= keep.min_per_member, "MoELayer: keeping ",
              rows.size(), " experts, fewer than k = ", keep.min_per_member);
  router_->drop_columns(rows);
  experts_->keep_experts(experts);
}

void MoELayerImpl::set_capacity_factor(double capacity_factor) {
  TORCH_CHECK(capacity_factor > 0.0, "MoELayer: capacity_factor should be > 0, got ",
              capacity_factor);
  moeprune::set_capacity_factor(options.router(), capacity_factor);
  router_->set_capacity_factor(capacity_factor);
}

void MoELayerImpl::set_group_size(int64_t group_size) {
  TORCH_CHECK(group_size >= 0, "MoELayer: group_size should be >= 0, got ", group_size);
  moeprune::set_group_size(options.router(), group_size);
  router_->set_group_size(group_size);
}

MoELayerState MoELayerImpl::local_state() const {
  MoELayerState s;
  s.bank = experts_->state();
  s.router_rows_dropped = router_->num_experts() != experts_->options.num_experts();
  return s;
}

MoELayerState MoELayerImpl::state() const {
  auto s = local_state();
  if (exchange_) {
    s.bank.held = exchange_->held_experts();
  }
  return s;
}

void MoELayerImpl::restore(const MoELayerState& state) {
  TORCH_CHECK(state.bank.num_experts == options.num_experts(),
              "MoELayer: the state is of a layer of ", state.bank.num_experts,
              " experts, this layer has ", options.num_experts());
  TORCH_CHECK(!exchange_,
              "MoELayer: the experts are spread over processes; restore before "
              "distributed::shard_experts");
  TORCH_CHECK(this->state().is_plain(),
              "MoELayer: restore needs a plain layer (this one is already pruned, merged or "
              "factorised)");
  if (state.router_rows_dropped) {
    TORCH_CHECK(state.bank.groups.empty(),
                "MoELayer: a state with dropped router rows cannot be merged");
    keep_experts(state.bank.held, /*drop_router_columns=*/true);
    if (state.bank.rank > 0) {
      experts_->factorize(state.bank.rank, /*compute=*/false);
    }
    return;
  }
  experts_->restore(state.bank);
}

void MoELayerImpl::set_capture(std::vector<MoELayerCall>* sink, bool with_inputs) {
  capture_ = sink;
  capture_inputs_ = with_inputs;
}

}  // namespace moeprune
