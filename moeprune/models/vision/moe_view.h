#pragma once

// The MoE view (layers/moe_view.h) of a VisionTransformer: its MoE blocks keyed by block index,
// walked by running the model over batches of images under one capture scope.
#include <moeprune/layers/moe_view.h>
#include <moeprune/models/vision/vision_transformer.h>

#include <memory>
#include <string>
#include <vector>

namespace moeprune {

class VisionTransformerMoEView : public MoEView {
 public:
  /// `images` (optional): calibration batches of normalised images [B, C, H, W].
  explicit VisionTransformerMoEView(VisionTransformer model, CalibrationData images = {});

  /// Block i's MoE layer, keyed i and named "block<i>.moe" (its module path).
  std::vector<MoELayerEntry> layers() const override;
  /// Each block's attention projections ("block<i>.qkv", "block<i>.proj") and a dense block's
  /// MLP ("block<i>.fc1", "block<i>.fc2"), keyed i; not the head.
  std::vector<LinearEntry> linears() const override;
  bool has_calibration() const override { return static_cast<bool>(images_); }
  void walk(bool with_inputs, const LayerVisitor& visit) const override;
  /// Runs the whole model, capturing only the layers keyed `keys`.
  void walk_layers(const std::vector<int64_t>& keys, bool with_inputs,
                   const LayerVisitor& visit) const override;
  /// The options JSON without the head's class count and the capacity factor, which may change
  /// between pre-training, fine-tuning and pruning.
  std::string signature() const override;

 private:
  VisionTransformer model_;
  CalibrationData images_;
};

/// The MoE view of `model`, with optional calibration images.
std::shared_ptr<VisionTransformerMoEView> moe_view(const VisionTransformer& model,
                                                   CalibrationData images = {});

}  // namespace moeprune
