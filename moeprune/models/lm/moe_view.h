#pragma once

// The MoE view (layers/moe_view.h) of a CausalLM: its MoE layers keyed by decoder layer index
// and named by their Hugging Face module path, walked by running the model over batches of
// token ids under one capture scope. Every criterion, plan, Expert Drop, merging and low-rank
// compression then works on the language model. Its dense linear layers (attention, shared
// experts, dense MLPs) are listed for compressions that go beyond the experts (sparsify's
// targets); criteria, plans and merging see the MoE layers only.
#include <moeprune/layers/moe_view.h>
#include <moeprune/models/lm/causal_lm.h>

#include <memory>
#include <string>
#include <vector>

namespace moeprune::lm {

class CausalLMMoEView : public MoEView {
 public:
  /// `tokens` (optional): calibration batches of token ids [B, S] (int64).
  explicit CausalLMMoEView(CausalLM model, CalibrationData tokens = {});

  /// Decoder layer i's MoE layer, keyed i and named "model.layers.<i>.mlp" (Mixtral:
  /// "model.layers.<i>.block_sparse_moe").
  std::vector<MoELayerEntry> layers() const override;
  bool has_calibration() const override { return static_cast<bool>(tokens_); }
  void walk(bool with_inputs, const LayerVisitor& visit) const override;
  /// Runs the whole model, capturing only the layers keyed `keys`.
  void walk_layers(const std::vector<int64_t>& keys, bool with_inputs,
                   const LayerVisitor& visit) const override;
  /// Every decoder layer's attention projections, shared expert and dense MLP, keyed by decoder
  /// layer index and named by their Hugging Face module paths.
  std::vector<LinearEntry> linears() const override;
  /// The architecture: model_type, sizes and which layers are MoE.
  std::string signature() const override;

 private:
  CausalLM model_;
  CalibrationData tokens_;
};

/// The MoE view of `model`, with optional calibration token batches.
std::shared_ptr<CausalLMMoEView> moe_view(const CausalLM& model, CalibrationData tokens = {});

}  // namespace moeprune::lm
