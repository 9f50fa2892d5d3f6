#pragma once

// Expert-pruning criteria over the model-neutral MoE view (layers/moe_view.h): a criterion
// scores one layer from the fine-tuned layer, the pre-trained layer, the calibration calls that
// reached the layer, and a seed. Nothing here knows a model type.
#include <moeprune/layers/moe_view.h>

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace moeprune::pruning {

using moeprune::CalibrationData;

/// What a criterion scores one MoE layer from.
struct LayerScoringContext {
  /// The fine-tuned model's layer.
  const MoELayerEntry& finetuned;
  /// The pre-trained model's layer of the same key (nullptr unless the criterion needs it).
  const MoELayerEntry* pretrained = nullptr;
  /// The calibration calls that reached the fine-tuned layer (empty unless the criterion needs
  /// data; with their input tokens when it needs inputs).
  const LayerCalls& calls;
  uint64_t seed = 0;
};

/// What score_experts works on: the fine-tuned model's MoE view (with calibration data when the
/// criterion needs it), the pre-trained model's (for criteria that compare), and a seed.
struct CriterionContext {
  std::shared_ptr<const MoEView> finetuned;
  std::shared_ptr<const MoEView> pretrained;
  uint64_t seed = 0;
};

/// One score per expert of each MoE layer (keyed by the layer's key), [E] float64 in the
/// router's expert order. Lower scores are pruned first, for every criterion.
using ExpertScores = std::map<int64_t, torch::Tensor>;

/// A way to rank the experts of a MoE layer. Implement this to add a criterion.
class Criterion {
 public:
  virtual ~Criterion() = default;
  virtual std::string name() const = 0;
  /// One line: what the score is and where it comes from.
  virtual std::string description() const = 0;
  virtual bool needs_pretrained() const { return false; }
  /// Whether the score uses calibration data (the routing of the calls that reached the layer).
  virtual bool needs_data() const { return false; }
  /// Whether it also needs the calls' input tokens (to run the experts).
  virtual bool needs_inputs() const { return false; }
  /// Whether the score reads expert weights (not only routers), so a caller streaming a large
  /// checkpoint knows whether to load them.
  virtual bool needs_expert_weights() const { return false; }
  /// How many experts the plan will prune in each layer, when the caller knows it before scoring
  /// (criteria that search for the best subset of that size, such as naee, use it; 0: unknown).
  virtual void set_prune_count(int64_t /*n*/) {}
  /// [E] scores for the experts of one layer, in the router's expert order.
  virtual torch::Tensor score_layer(const LayerScoringContext& context) const = 0;
};

/// Criteria by name: the built-in ones, plus any the caller adds. Not global: make one where
/// it is needed.
class CriterionRegistry {
 public:
  using Factory = std::function<std::unique_ptr<Criterion>()>;

  /// router_norm_change, importance, router_magnitude, neuron_magnitude_change, frequency,
  /// reap and random.
  static CriterionRegistry with_builtins();

  /// Adds (or replaces) a criterion.
  void add(const std::string& name, Factory factory);
  /// The criterion called `name`; throws, listing the known names, if there is none.
  std::unique_ptr<Criterion> create(const std::string& name) const;
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return factories_.count(name) == 1; }

 private:
  std::map<std::string, Factory> factories_;
};

/// Scores every MoE layer of context.finetuned after checking the context has what the criterion
/// needs (the pre-trained view with the same layers, calibration data); walks the calibration
/// data once when the criterion needs it. The scores are checked to cover every expert.
ExpertScores score_experts(const Criterion& criterion, const CriterionContext& context);
/// The same, for views the caller holds.
ExpertScores score_experts(const Criterion& criterion, const MoEView& finetuned,
                           const MoEView* pretrained = nullptr, uint64_t seed = 0);

/// Scores one layer (checks as score_experts); for callers that walk layers themselves, such as
/// a checkpoint streamed one layer at a time.
torch::Tensor score_layer(const Criterion& criterion, const LayerScoringContext& context);

}  // namespace moeprune::pruning
