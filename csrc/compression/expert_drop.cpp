#include <moeprune/compression/expert_drop.h>

#include <moeprune/pruning/builtin_criteria.h>

#include <torch/torch.h>

namespace moeprune::compression {

pruning::PruningPlan expert_drop(const MoEView& view, const ExpertDropOptions& options) {
  TORCH_CHECK((options.per_layer() > 0) != (options.total() > 0),
              "expert_drop: give per_layer or total (exactly one of them > 0), got per_layer ",
              options.per_layer(), " and total ", options.total());
  for (const auto& entry : view.layers()) {
    TORCH_CHECK(entry.layer->state().is_plain(), "expert_drop: MoE layer ", entry.name,
                " is already pruned; drop from the unpruned model");
  }
  TORCH_CHECK(view.has_calibration(), "expert_drop: no calibration data");
  const auto scores = pruning::score_experts(pruning::Importance(), view);
  auto plan =
      options.per_layer() > 0
          ? pruning::PruningPlan::same_count(scores, view, options.per_layer(), {}, "expert_drop")
          : pruning::PruningPlan::global_budget(scores, view, options.total(), 0, "expert_drop");
  pruning::apply_plan(view, plan, options.remove_router_rows());
  return plan;
}

}  // namespace moeprune::compression
