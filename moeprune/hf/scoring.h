#pragma once

// One scoring engine for checkpoints on disk (`moeprune score`, `prune`): every MoE layer of a
// Source scored with a criterion, one layer in memory at a time. A criterion that reads no data
// gets each layer alone (routers only unless it reads expert weights); one that needs data gets
// the calls its layer received from a LayerInputs: hidden states from a file (HiddenStateFile,
// for checkpoints moeprune cannot run whole), or calibration tokens streamed through the model
// one decoder layer at a time (lm::StreamedCalibration). The in-memory models are the special
// case pruning::score_experts covers over their MoE view.
#include <moeprune/hf/source.h>
#include <moeprune/layers/moe_view.h>
#include <moeprune/pruning/criterion.h>

#include <cstdint>
#include <functional>
#include <string>

namespace moeprune::hf {

/// Called for each MoE layer with its reference, the loaded layer and the calls it received.
using LayerCallsVisitor =
    std::function<void(const MoELayerRef& ref, const MoELayerEntry& layer, const LayerCalls&)>;

/// Where each MoE layer's calibration calls come from.
class LayerInputs {
 public:
  virtual ~LayerInputs() = default;
  /// Calls `visit` once for every MoE layer of `source`, in order, with the layer loaded (as
  /// `load` says, where the inputs do not run the whole model) and the calls it received (the
  /// tokens routed, and their hidden states when `with_inputs`).
  virtual void visit_layers(const Source& source, const LoadOptions& load, bool with_inputs,
                            const LayerCallsVisitor& visit) const = 0;
  /// What the inputs are, for messages.
  virtual std::string describe() const = 0;
};

/// Each MoE layer's input hidden states from a safetensors file: tensor "<layer prefix>"
/// [..., d] (moeprune --moe-inputs).
class HiddenStateFile : public LayerInputs {
 public:
  explicit HiddenStateFile(std::string path);
  void visit_layers(const Source& source, const LoadOptions& load, bool with_inputs,
                    const LayerCallsVisitor& visit) const override;
  std::string describe() const override { return "hidden states from " + path_; }

 private:
  std::string path_;
};

struct ScoringOptions {
  /// The pre-trained checkpoint, for criteria that compare with pre-training; its MoE layers are
  /// matched to the fine-tuned ones by position and must have as many experts.
  const Source* pretrained = nullptr;
  /// Calibration, for criteria that need data (pruning::Criterion::needs_data / needs_inputs).
  const LayerInputs* inputs = nullptr;
  uint64_t seed = 0;
  /// The dtype layers are read in where the inputs do not decide it (criteria reading weights).
  torch::Dtype dtype = torch::kFloat;
  /// Called after each layer is scored (layers done, layers).
  std::function<void(int64_t, int64_t)> progress;
  /// Scores of the MoE layers a resumed run already has (lm/stream_journal.h), kept as given;
  /// the inputs then visit only the layers after them.
  pruning::ExpertScores done;
  /// Called with each layer's index and scores as soon as it is scored (a journal keeps them).
  std::function<void(int64_t, const torch::Tensor&)> on_scored;
};

/// Scores every expert of every MoE layer of `finetuned`, keyed by MoELayerRef::index. Refuses,
/// naming the criterion, a missing pre-trained model or calibration.
pruning::ExpertScores score_checkpoint(const Source& finetuned, const pruning::Criterion& criterion,
                                       const ScoringOptions& options = {});

}  // namespace moeprune::hf
