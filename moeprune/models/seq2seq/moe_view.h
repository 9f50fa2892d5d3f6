#pragma once

// The MoE view (layers/moe_view.h) of a Switch Transformers model: its encoder and decoder MoE
// layers in order (MC-SMoE merges both), keyed 0, 1, ... as the checkpoint reader numbers them
// and named by their Hugging Face module paths; walked by running the model over calibration
// pairs under one capture scope.
#include <moeprune/layers/moe_view.h>
#include <moeprune/models/seq2seq/switch_transformer.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace moeprune::seq2seq {

/// One calibration batch: encoder input ids [B, S], their attention mask (optional), and the
/// decoder input ids [B, T].
struct Seq2SeqBatch {
  torch::Tensor input_ids, attention_mask, decoder_input_ids;
};
/// Calls `visit` once per calibration batch.
using Seq2SeqCalibration =
    std::function<void(const std::function<void(const Seq2SeqBatch& batch)>& visit)>;

class SwitchMoEView : public MoEView {
 public:
  explicit SwitchMoEView(SwitchTransformer model, Seq2SeqCalibration batches = {});

  /// Encoder MoE layers then decoder ones, keyed by position, named
  /// "encoder.block.<i>.layer.1.mlp" / "decoder.block.<i>.layer.2.mlp".
  std::vector<MoELayerEntry> layers() const override;
  bool has_calibration() const override { return static_cast<bool>(batches_); }
  void walk(bool with_inputs, const LayerVisitor& visit) const override;
  /// Runs the whole model, capturing only the layers keyed `keys`.
  void walk_layers(const std::vector<int64_t>& keys, bool with_inputs,
                   const LayerVisitor& visit) const override;
  /// model_type, sizes and the sparse blocks.
  std::string signature() const override;

 private:
  SwitchTransformer model_;
  Seq2SeqCalibration batches_;
};

/// The MoE view of `model`, with optional calibration batches.
std::shared_ptr<SwitchMoEView> moe_view(const SwitchTransformer& model,
                                        Seq2SeqCalibration batches = {});

}  // namespace moeprune::seq2seq
