#include <moeprune/pruning/builtin_criteria.h>

#include <moeprune/ops.h>

#include <torch/torch.h>

namespace moeprune::pruning {
namespace {

torch::Tensor router_norms(const MoELayer& layer) {
  return layer->router().router_weight().detach().to(torch::kDouble).norm(2, 1).cpu();
}

// Runs the fine-tuned MoE layers over the calibration data in evaluation mode and hands each
// layer's plan (and, when asked, its input tokens [T, d]) to `visit(block, plan, tokens)`: through
// the whole model for image data, through each layer's router for per-layer token data.
void for_each_routing(
    const CriterionContext& context, bool with_inputs,
    const std::function<void(int64_t, const RoutingPlan&, const torch::Tensor&)>& visit) {
  torch::NoGradGuard no_grad;
  if (context.layer_data) {
    const auto layers = context.finetuned_moe_layers();
    context.layer_data([&](int64_t block, const torch::Tensor& tokens) {
      const auto it = layers.find(block);
      TORCH_CHECK(it != layers.end(), "calibration tokens for MoE layer ", block,
                  ", which the model does not have");
      MoELayer layer = it->second;
      const bool was_training = layer->is_training();
      layer->eval();
      const auto x = tokens.reshape({-1, tokens.size(-1)});
      const auto plan = layer->router().route(x, {}, -1, 0).plan;
      if (was_training) {
        layer->train();
      }
      visit(block, plan, with_inputs ? x : torch::Tensor());
    });
    return;
  }
  auto model = context.finetuned;
  const bool was_training = model->is_training();
  const bool captured = model->capture_moe_inputs;
  model->eval();
  model->capture_moe_inputs = with_inputs;
  const auto blocks = model->moe_layers();
  context.data([&](const torch::Tensor& images) {
    const auto out = model->forward(images);
    for (size_t i = 0; i < out.plans.size(); ++i) {
      visit(blocks[i].first, out.plans[i], with_inputs ? out.moe_inputs[i] : torch::Tensor());
    }
  });
  model->capture_moe_inputs = captured;
  if (was_training) {
    model->train();
  }
}

ExpertScores zero_scores(const CriterionContext& context) {
  ExpertScores scores;
  for (auto& [block, layer] : context.finetuned_moe_layers()) {
    scores[block] = torch::zeros({layer->router().num_experts()}, torch::kDouble);
  }
  return scores;
}

}  // namespace

std::string RouterNormChange::description() const {
  return "||W_ft[:, s]|| - ||W_pre[:, s]||: change of the router column's norm in fine-tuning "
         "(Chowdhury et al., ICML 2024)";
}

ExpertScores RouterNormChange::score(const CriterionContext& context) const {
  const auto pre = context.pretrained_moe_layers();
  ExpertScores scores;
  for (auto& [block, layer] : context.finetuned_moe_layers()) {
    scores[block] = router_norms(layer) - router_norms(pre.at(block));
  }
  return scores;
}

std::string Importance::description() const {
  return "sum over calibration tokens of the expert's softmax gate (V-MoE importance)";
}

ExpertScores Importance::score(const CriterionContext& context) const {
  auto scores = zero_scores(context);
  for_each_routing(context, false,
                   [&](int64_t block, const RoutingPlan& plan, const torch::Tensor&) {
                     scores[block] += plan.router_probs.to(torch::kDouble).sum(0).cpu();
                   });
  return scores;
}

std::string RouterMagnitude::description() const {
  return "||W_ft[:, s]||: norm of the fine-tuned router column";
}

ExpertScores RouterMagnitude::score(const CriterionContext& context) const {
  ExpertScores scores;
  for (auto& [block, layer] : context.finetuned_moe_layers()) {
    scores[block] = router_norms(layer);
  }
  return scores;
}

std::string NeuronMagnitudeChange::description() const {
  return "mean over the expert's hidden neurons of ||w1_ft[:, j]|| - ||w1_pre[:, j]||";
}

ExpertScores NeuronMagnitudeChange::score(const CriterionContext& context) const {
  const auto pre = context.pretrained_moe_layers();
  ExpertScores scores;
  for (auto& [block, layer] : context.finetuned_moe_layers()) {
    auto& ft_bank = layer->experts();
    MoELayer pre_layer = pre.at(block);
    auto& pre_bank = pre_layer->experts();
    TORCH_CHECK(ft_bank->holds_all() && pre_bank->holds_all(),
                "neuron_magnitude_change: MoE block ", block,
                " has pruned experts; score the unpruned models");
    const auto norms = [](const torch::Tensor& w1) {  // [E, d, F] -> [E, F]
      return w1.detach().to(torch::kDouble).norm(2, 1).cpu();
    };
    scores[block] = (norms(ft_bank->w1) - norms(pre_bank->w1)).mean(1);
  }
  return scores;
}

std::string Frequency::description() const {
  return "calibration tokens whose top-k choices include the expert";
}

ExpertScores Frequency::score(const CriterionContext& context) const {
  auto scores = zero_scores(context);
  for_each_routing(
      context, false, [&](int64_t block, const RoutingPlan& plan, const torch::Tensor&) {
        const auto used = plan.expert_index.masked_select(plan.expert_index.ge(0)).cpu();
        scores[block] += torch::bincount(used, {}, scores[block].size(0)).to(torch::kDouble);
      });
  return scores;
}

std::string Reap::description() const {
  return "mean over routed tokens of the renormalised gate times ||expert output|| (REAP)";
}

ExpertScores Reap::score(const CriterionContext& context) const {
  auto sums = zero_scores(context);
  auto counts = zero_scores(context);
  const auto layers = context.finetuned_moe_layers();
  for_each_routing(
      context, true, [&](int64_t block, const RoutingPlan& plan, const torch::Tensor& x) {
        MoELayer layer = layers.at(block);
        const auto rows = ops::dispatch(x, plan);
        const auto y = layer->experts()->forward(rows, plan.counts());
        const auto norms = y.to(torch::kDouble).norm(2, 1);
        // Gates renormalised over each token's used slots (its top-k).
        const auto w = plan.combine_weight.to(torch::kDouble) * plan.expert_index.ge(0);
        const auto renormalised = (w / w.sum(1, true).clamp_min(1e-30)).reshape({-1});
        const auto gate = renormalised.index_select(0, plan.row_slot);
        const auto expert = plan.expert_index.reshape({-1}).index_select(0, plan.row_slot);
        const int64_t E = sums[block].size(0);
        sums[block] +=
            torch::zeros({E}, torch::kDouble).index_add_(0, expert.cpu(), (gate * norms).cpu());
        counts[block] += torch::bincount(expert.cpu(), {}, E).to(torch::kDouble);
      });
  ExpertScores scores;
  for (auto& [block, s] : sums) {
    scores[block] = s / counts[block].clamp_min(1.0);
  }
  return scores;
}

std::string RandomCriterion::description() const {
  return "a seeded random permutation per layer";
}

ExpertScores RandomCriterion::score(const CriterionContext& context) const {
  ExpertScores scores;
  for (auto& [block, layer] : context.finetuned_moe_layers()) {
    auto generator =
        at::detail::createCPUGenerator(context.seed * 1000003ULL + static_cast<uint64_t>(block));
    scores[block] =
        torch::randperm(layer->router().num_experts(), generator, torch::kLong).to(torch::kDouble);
  }
  return scores;
}

}  // namespace moeprune::pruning
