#pragma once

#include <moeprune/vision_transformer.h>

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace moeprune::pruning {

/// Calibration data: calls `visit` once per batch of images (normalised, [B, C, H, W]). It may be
/// called more than once, so criteria can make several passes.
using CalibrationData = std::function<void(const std::function<void(const torch::Tensor&)>& visit)>;

/// Calibration data fed to the MoE layers directly: calls `visit(layer, tokens)` with input
/// tokens [T, d] of the layer keyed `layer`, once or more per layer.
using LayerCalibrationData = std::function<void(
    const std::function<void(int64_t layer, const torch::Tensor& tokens)>& visit)>;

/// What a criterion may use: a model, or its MoE layers on their own (as read from a Hugging Face
/// checkpoint), keyed by block/layer index. Criteria that need the pre-trained model or data say
/// so (Criterion::needs_pretrained / needs_data) and refuse to run without them.
struct CriterionContext {
  VisionTransformer finetuned{nullptr};
  VisionTransformer pretrained{nullptr};
  CalibrationData data;
  /// Instead of the models above: their MoE layers, and calibration tokens per layer.
  std::map<int64_t, MoELayer> finetuned_layers;
  std::map<int64_t, MoELayer> pretrained_layers;
  LayerCalibrationData layer_data;
  uint64_t seed = 0;

  /// The fine-tuned (pre-trained) MoE layers, from the model or from *_layers.
  std::map<int64_t, MoELayer> finetuned_moe_layers() const;
  std::map<int64_t, MoELayer> pretrained_moe_layers() const;
  bool has_data() const { return static_cast<bool>(data) || static_cast<bool>(layer_data); }
};

/// One score per expert of each MoE layer (keyed by block index), [E] float64 in the router's
/// expert order. Lower scores are pruned first, for every criterion.
using ExpertScores = std::map<int64_t, torch::Tensor>;

/// A way to rank the experts of every MoE layer. Implement this to add a criterion.
class Criterion {
 public:
  virtual ~Criterion() = default;
  virtual std::string name() const = 0;
  /// One line: what the score is and where it comes from.
  virtual std::string description() const = 0;
  virtual bool needs_pretrained() const { return false; }
  virtual bool needs_data() const { return false; }
  /// Whether the score reads expert weights (not only routers), so a caller streaming a large
  /// checkpoint knows whether to load them.
  virtual bool needs_expert_weights() const { return false; }
  /// Scores every expert of every MoE layer of context.finetuned.
  virtual ExpertScores score(const CriterionContext& context) const = 0;
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

/// Runs `criterion` after checking the context has what it needs (and that the pre-trained and
/// fine-tuned models have the same MoE layers); the scores are checked to cover every layer.
ExpertScores score_experts(const Criterion& criterion, const CriterionContext& context);

}  // namespace moeprune::pruning
