#include <moeprune/pruning/builtin_criteria.h>

#include <moeprune/ops/ops.h>

#include <torch/torch.h>

namespace moeprune::pruning {
namespace {

torch::Tensor router_norms(const MoELayer& layer) {
  return layer->router().router_weight().detach().to(torch::kDouble).norm(2, 1).cpu();
}

torch::Tensor zero_scores(const LayerScoringContext& context) {
  return torch::zeros({context.finetuned.layer->router().num_experts()}, torch::kDouble);
}

}  // namespace

std::string RouterNormChange::description() const {
  return "||W_ft[:, s]|| - ||W_pre[:, s]||: change of the router column's norm in fine-tuning "
         "(Chowdhury et al., ICML 2024)";
}

torch::Tensor RouterNormChange::score_layer(const LayerScoringContext& context) const {
  return router_norms(context.finetuned.layer) - router_norms(context.pretrained->layer);
}

std::string Importance::description() const {
  return "sum over calibration tokens of the expert's softmax gate (V-MoE importance)";
}

torch::Tensor Importance::score_layer(const LayerScoringContext& context) const {
  auto scores = zero_scores(context);
  for (const auto& call : context.calls) {
    scores += call.plan.router_probs.to(torch::kDouble).sum(0).cpu();
  }
  return scores;
}

std::string RouterMagnitude::description() const {
  return "||W_ft[:, s]||: norm of the fine-tuned router column";
}

torch::Tensor RouterMagnitude::score_layer(const LayerScoringContext& context) const {
  return router_norms(context.finetuned.layer);
}

std::string NeuronMagnitudeChange::description() const {
  return "mean over the expert's hidden neurons of ||w1_ft[:, j]|| - ||w1_pre[:, j]||";
}

torch::Tensor NeuronMagnitudeChange::score_layer(const LayerScoringContext& context) const {
  const auto& ft_bank = context.finetuned.layer->experts();
  const auto& pre_bank = context.pretrained->layer->experts();
  TORCH_CHECK(ft_bank->holds_all() && pre_bank->holds_all(), "neuron_magnitude_change: MoE layer ",
              context.finetuned.name, " has pruned experts; score the unpruned models");
  const auto norms = [](const torch::Tensor& w1) {  // [E, d, F] -> [E, F]
    return w1.detach().to(torch::kDouble).norm(2, 1).cpu();
  };
  return (norms(ft_bank->w1) - norms(pre_bank->w1)).mean(1);
}

std::string Frequency::description() const {
  return "calibration tokens whose top-k choices include the expert";
}

torch::Tensor Frequency::score_layer(const LayerScoringContext& context) const {
  auto scores = zero_scores(context);
  for (const auto& call : context.calls) {
    const auto& plan = call.plan;
    const auto used = plan.expert_index.masked_select(plan.expert_index.ge(0)).cpu();
    scores += torch::bincount(used, {}, scores.size(0)).to(torch::kDouble);
  }
  return scores;
}

std::string Reap::description() const {
  return "mean over routed tokens of the renormalised gate times ||expert output|| (REAP)";
}

namespace {

// Sums over routed tokens of (gate x) ||f_j(x)||_2 and the counts, per expert (REAP, EAN).
std::pair<torch::Tensor, torch::Tensor> routed_output_norms(const LayerScoringContext& context,
                                                            bool with_gate, const char* name) {
  torch::NoGradGuard no_grad;
  MoELayer layer = context.finetuned.layer;
  auto sums = zero_scores(context);
  auto counts = zero_scores(context);
  const int64_t E = sums.size(0);
  for (const auto& call : context.calls) {
    const auto& plan = call.plan;
    TORCH_CHECK(call.input.defined(), name, ": the calibration calls of MoE layer ",
                context.finetuned.name, " lack their input tokens");
    const auto rows = ops::dispatch(call.input, plan);
    const auto y = layer->experts()->forward(rows, plan.counts());
    auto weighted = y.to(torch::kDouble).norm(2, 1);
    if (with_gate) {
      // Gates renormalised over each token's used slots (its top-k).
      const auto w = plan.combine_weight.to(torch::kDouble) * plan.expert_index.ge(0);
      const auto renormalised = (w / w.sum(1, true).clamp_min(1e-30)).reshape({-1});
      weighted = weighted * renormalised.index_select(0, plan.row_slot);
    }
    const auto expert = plan.expert_index.reshape({-1}).index_select(0, plan.row_slot);
    sums += torch::zeros({E}, torch::kDouble).index_add_(0, expert.cpu(), weighted.cpu());
    counts += torch::bincount(expert.cpu(), {}, E).to(torch::kDouble);
  }
  return {sums, counts};
}

}  // namespace

torch::Tensor Reap::score_layer(const LayerScoringContext& context) const {
  const auto [sums, counts] = routed_output_norms(context, true, "reap");
  return sums / counts.clamp_min(1.0);
}

std::string ExpertActivationNorm::description() const {
  return "mean over routed tokens of ||expert output|| (EAN, REAP's baseline)";
}

torch::Tensor ExpertActivationNorm::score_layer(const LayerScoringContext& context) const {
  const auto [sums, counts] = routed_output_norms(context, false, "ean");
  return sums / counts.clamp_min(1.0);
}

std::string RandomCriterion::description() const {
  return "a seeded random permutation per layer";
}

torch::Tensor RandomCriterion::score_layer(const LayerScoringContext& context) const {
  auto generator = at::detail::createCPUGenerator(context.seed * 1000003ULL +
                                                  static_cast<uint64_t>(context.finetuned.key));
  return torch::randperm(context.finetuned.layer->router().num_experts(), generator, torch::kLong)
      .to(torch::kDouble);
}

}  // namespace moeprune::pruning
