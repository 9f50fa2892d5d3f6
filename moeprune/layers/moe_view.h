#pragma once

// The model-neutral view of "a model's MoE layers" that pruning and compression work on: each
// layer with a stable key and a name, and a walk over them in order together with the
// calibration inputs that reached each one. An in-memory model provides the walk by running its
// forward passes under one capture scope (MoECapture); layers held on their own (a checkpoint
// read layer by layer) route their calibration tokens directly (LayerMapView).
#include <moeprune/layers/linear_capture.h>
#include <moeprune/layers/moe_layer.h>

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace moeprune {

/// Calibration data for an in-memory model: calls `visit` once per batch of model inputs (for a
/// ViT, normalised images [B, C, H, W]).
using CalibrationData = std::function<void(const std::function<void(const torch::Tensor&)>& visit)>;

/// One MoE layer of a model, as the compression core sees it.
struct MoELayerEntry {
  /// Stable id of the layer in its model: the block index of a ViT, the decoder layer index of
  /// a language model. Scores, plans and merge groups are keyed by it.
  int64_t key = 0;
  /// Where the layer sits, for messages and tables ("blocks.3.moe", "model.layers.3.mlp").
  std::string name;
  MoELayer layer{nullptr};
};

/// The forward calls that reached one MoE layer during calibration, in order.
using LayerCalls = std::vector<MoELayerCall>;

/// Visits one MoE layer with its calibration calls.
using LayerVisitor = std::function<void(const MoELayerEntry& layer, const LayerCalls& calls)>;

/// A model's MoE layers, whatever the model. Implement it to let pruning and compression work on
/// a new model family.
class MoEView {
 public:
  virtual ~MoEView() = default;
  /// The MoE layers, in the order the model runs them.
  virtual std::vector<MoELayerEntry> layers() const = 0;
  /// Whether walk() has calibration data to run.
  virtual bool has_calibration() const = 0;
  /// Runs the calibration data (evaluation mode, no grad) and calls `visit` once per MoE layer,
  /// in order, with the calls that reached it; `with_inputs` keeps each call's input tokens.
  /// Throws when the view has no calibration data.
  virtual void walk(bool with_inputs, const LayerVisitor& visit) const = 0;
  /// walk() visiting only the layers keyed `keys` (in the model's order, each key once). A view
  /// that captures by layer records nothing of the others, so a caller that walks one layer at a
  /// time (sequential compression: layer i calibrated on the outputs of the already compressed
  /// layers before it) holds one layer's inputs. The default walks everything and filters.
  virtual void walk_layers(const std::vector<int64_t>& keys, bool with_inputs,
                           const LayerVisitor& visit) const;
  /// The model's dense linear layers (attention, shared experts, dense MLPs; not the experts,
  /// routers or output head), in the order the model runs them; a compression beyond the experts
  /// captures their inputs (LinearInputCapture) while walk_layers runs the model. Empty: the view
  /// offers none.
  virtual std::vector<LinearEntry> linears() const { return {}; }
  /// The architecture a plan made on this view fits (JSON text; empty: not recorded).
  virtual std::string signature() const { return {}; }

  /// The layers by key.
  std::map<int64_t, MoELayerEntry> layer_map() const;
};

/// Records the forward calls of MoE layers while it lives (RAII): each layer's routing, and its
/// input tokens when asked. Layers leave the scope as they entered it, also on an exception.
class MoECapture {
 public:
  MoECapture(const std::vector<MoELayerEntry>& layers, bool with_inputs);
  ~MoECapture();
  MoECapture(const MoECapture&) = delete;
  MoECapture& operator=(const MoECapture&) = delete;

  /// The calls layer `key` received so far.
  const LayerCalls& calls(int64_t key) const;

 private:
  std::vector<MoELayerEntry> layers_;
  std::map<int64_t, LayerCalls> calls_;
};

/// walk() for an in-memory model: runs `run_forward_passes` (the model over its calibration
/// data) in evaluation mode without gradients under one MoECapture, then visits the layers in
/// order. `model` is put back in training mode afterwards if it was.
void walk_by_capture(torch::nn::Module& model, const std::vector<MoELayerEntry>& layers,
                     bool with_inputs, const std::function<void()>& run_forward_passes,
                     const LayerVisitor& visit);

/// The entries of `layers` keyed `keys`, in the order of `layers`; an error names a key that is
/// not there or comes twice.
std::vector<MoELayerEntry> select_layers(const std::vector<MoELayerEntry>& layers,
                                         const std::vector<int64_t>& keys);

/// Calibration tokens fed to MoE layers directly: calls `visit(key, tokens)` with input tokens
/// [..., d] of the layer keyed `key`, once or more per layer.
using LayerTokens =
    std::function<void(const std::function<void(int64_t key, const torch::Tensor& tokens)>& visit)>;

/// MoE layers held on their own (e.g. read from a Hugging Face checkpoint), with calibration
/// tokens per layer: the walk routes each layer's tokens through that layer.
class LayerMapView : public MoEView {
 public:
  explicit LayerMapView(std::vector<MoELayerEntry> layers, LayerTokens tokens = {},
                        std::string signature = {});
  /// Layers by key, named "layer <key>".
  static std::shared_ptr<LayerMapView> of(const std::map<int64_t, MoELayer>& layers,
                                          LayerTokens tokens = {});

  std::vector<MoELayerEntry> layers() const override { return layers_; }
  bool has_calibration() const override { return static_cast<bool>(tokens_); }
  void walk(bool with_inputs, const LayerVisitor& visit) const override;
  std::string signature() const override { return signature_; }

 private:
  std::vector<MoELayerEntry> layers_;
  LayerTokens tokens_;
  std::string signature_;
};

}  // namespace moeprune
