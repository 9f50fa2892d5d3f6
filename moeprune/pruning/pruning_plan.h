#pragma once

#include <moeprune/pruning/criterion.h>
#include <moeprune/vision_transformer.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moeprune::pruning {

/// The experts one MoE layer loses.
struct LayerPlan {
  int64_t block = 0;
  int64_t num_experts = 0;      ///< router width of the layer
  std::vector<int64_t> pruned;  ///< original expert ids, increasing
  std::vector<double> scores;   ///< the criterion's score of every expert (may be empty)
};

/// Which experts of which MoE layers go. Built from scores in one of three forms, printed as a
/// table, saved and loaded as JSON; `validate` refuses a plan that does not fit a model.
struct PruningPlan {
  std::string criterion;
  /// The model the plan was made for (options JSON without the head and capacity), so a plan is
  /// not applied to another model.
  std::string model_signature;
  std::vector<LayerPlan> layers;

  /// The paper's form: the same number n of lowest-scored experts in each listed block (all
  /// MoE blocks when `blocks` is empty).
  static PruningPlan same_count(const ExpertScores& scores, const VisionTransformer& model,
                                int64_t n, std::vector<int64_t> blocks = {},
                                const std::string& criterion = "");
  /// A count per block.
  static PruningPlan per_layer(const ExpertScores& scores, const VisionTransformer& model,
                               const std::map<int64_t, int64_t>& counts,
                               const std::string& criterion = "");
  /// `total` lowest-scored experts over all layers (scores compared across layers), never
  /// leaving a layer fewer than max(floor, what its router needs) experts.
  static PruningPlan global_budget(const ExpertScores& scores, const VisionTransformer& model,
                                   int64_t total, int64_t floor = 0,
                                   const std::string& criterion = "");

  int64_t total_pruned() const;
  /// A readable table: block, experts kept/total, pruned ids, scores.
  std::string table() const;
  std::string to_json() const;
  static PruningPlan from_json(const std::string& text);

  /// Throws, naming the problem, unless the plan fits `model`: its signature, MoE blocks that
  /// exist, expert ids in range and distinct, and enough experts left (k for token choice,
  /// k in every member for E3-MoE, 1 for expert choice).
  void validate(const VisionTransformer& model) const;
};

/// The model signature a plan records.
std::string model_signature(const VisionTransformer& model);

/// Prunes `model` in place by `plan` (after validating it). Token-choice layers follow the
/// model's options().drop_router_columns (set it before applying for Expert Drop semantics).
void apply_plan(VisionTransformer& model, const PruningPlan& plan);

}  // namespace moeprune::pruning
