#pragma once

#include <moeprune/layers/moe_view.h>
#include <moeprune/pruning/criterion.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moeprune::pruning {

/// The experts one MoE layer loses.
struct LayerPlan {
  int64_t key = 0;              ///< the MoE layer's key in its view
  int64_t num_experts = 0;      ///< router width of the layer
  std::vector<int64_t> pruned;  ///< original expert ids, increasing
  std::vector<double> scores;   ///< the criterion's score of every expert (may be empty)
};

/// Which experts of which MoE layers go. Built from scores over a model's MoE view in one of
/// three forms, printed as a table, saved and loaded as JSON; `validate` refuses a plan that does
/// not fit a model.
struct PruningPlan {
  std::string criterion;
  /// The model the plan was made for (MoEView::signature), so a plan is not applied to another
  /// model; empty: not checked.
  std::string model_signature;
  std::vector<LayerPlan> layers;

  /// The paper's form: the same number n of lowest-scored experts in each listed layer (all MoE
  /// layers when `keys` is empty).
  static PruningPlan same_count(const ExpertScores& scores, const MoEView& view, int64_t n,
                                std::vector<int64_t> keys = {}, const std::string& criterion = "");
  /// A count per layer key.
  static PruningPlan per_layer(const ExpertScores& scores, const MoEView& view,
                               const std::map<int64_t, int64_t>& counts,
                               const std::string& criterion = "");
  /// `total` lowest-scored experts over all layers (scores compared across layers), never
  /// leaving a layer fewer than max(floor, what its router needs) experts. A layer with a
  /// group-limited router loses whole rounds (the next-lowest expert of every group, ranked by
  /// their mean score) so its groups stay equal; a total no set of rounds meets is refused.
  static PruningPlan global_budget(const ExpertScores& scores, const MoEView& view, int64_t total,
                                   int64_t floor = 0, const std::string& criterion = "");

  int64_t total_pruned() const;
  /// A readable table: layer, experts kept/total, pruned ids, scores.
  std::string table() const;
  std::string to_json() const;
  static PruningPlan from_json(const std::string& text);

  /// Throws, naming the problem, unless the plan fits the model of `view`: its signature, MoE
  /// layers that exist and are not pruned yet, expert ids in range and distinct, and enough
  /// experts left (the router's KeepConstraint: k for token choice, k in every member for
  /// E3-MoE, 1 for expert choice, equal groups for a group-limited router).
  void validate(const MoEView& view) const;
};

/// Prunes the layers of `view` in place by `plan` (after validating it). Token-choice layers keep
/// their router rows (Chowdhury et al.'s semantics) unless `drop_router_columns` (Expert Drop);
/// routers that always drop them (expert choice) do.
void apply_plan(const MoEView& view, const PruningPlan& plan, bool drop_router_columns = false);

}  // namespace moeprune::pruning
