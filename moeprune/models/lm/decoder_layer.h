#pragma once

#include <moeprune/models/lm/attention.h>
#include <moeprune/models/lm/feed_forward.h>
#include <moeprune/models/lm/options.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

namespace moeprune::lm {

struct DecoderLayerOutput {
  torch::Tensor hidden;
  torch::Tensor aux_loss;  ///< undefined for a dense layer
  /// The residual stream between attention and MLP, h + Attention(RMSNorm(h)) (Layer Drop's
  /// score compares it with `hidden`).
  torch::Tensor attention_hidden;
};

/// One pre-norm decoder layer: h + Attention(RMSNorm(h)), then h + MLP(RMSNorm(h)) where the MLP
/// is dense or a MoE block (LlamaDecoderLayer and the MoE families' decoder layers). After
/// Layer Drop a MoE layer has no MLP: h + Attention(RMSNorm(h)).
class DecoderLayerImpl : public torch::nn::Cloneable<DecoderLayerImpl> {
 public:
  /// Decoder layer `index` of a model with `options`.
  DecoderLayerImpl(CausalLMOptions options, int64_t index);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  DecoderLayerOutput forward(const torch::Tensor& hidden, const RotaryAngles& angles,
                             KVCache* cache = nullptr);

  bool is_moe() const { return !moe_block.is_empty(); }
  /// False once Layer Drop removed the MoE block.
  bool has_mlp() const { return !moe_block.is_empty() || !mlp.is_empty(); }
  /// Layer Drop: removes the MoE block and the RMSNorm before it (their parameters leave the
  /// module) and records the layer in options.dropped_mlp_layers. Refused for a dense layer.
  void drop_mlp();

  CausalLMOptions options;
  int64_t index;
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  GatedMLP mlp{nullptr};              ///< dense layers
  SparseMoeBlock moe_block{nullptr};  ///< MoE layers (registered as "mlp" too)
};
TORCH_MODULE(DecoderLayer);

}  // namespace moeprune::lm
