#pragma once

// A decoder-only causal language model with MoE blocks: token embedding, decoder layers, final
// RMSNorm and LM head (tied to the embedding or not). Built from CausalLMOptions, or read from a
// Hugging Face checkpoint folder (models/lm/checkpoint.h).
#include <moeprune/models/lm/decoder_layer.h>
#include <moeprune/models/lm/kv_cache.h>
#include <moeprune/models/lm/options.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <utility>
#include <vector>

namespace moeprune::lm {

struct CausalLMOutput {
  torch::Tensor logits;    ///< [B, S, vocab] in the model's dtype
  torch::Tensor aux_loss;  ///< mean of the MoE layers' weighted auxiliary losses (0 without)
};

class CausalLMImpl : public torch::nn::Cloneable<CausalLMImpl> {
 public:
  explicit CausalLMImpl(CausalLMOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// Logits of every position of `input_ids` [B, S] (int64). With a cache, the tokens continue
  /// the cached ones (positions cache->length() ...) and are appended to it.
  CausalLMOutput forward(const torch::Tensor& input_ids, KVCache* cache = nullptr);
  /// Called with each decoder layer's index, input and output as the model runs (Layer and
  /// Block Drop scores).
  using LayerTrace = std::function<void(int64_t layer, const torch::Tensor& input,
                                        const DecoderLayerOutput& output)>;
  /// The final hidden states [B, S, hidden] (after the last norm) and the auxiliary loss;
  /// `trace`, when given, sees every decoder layer (not with gradient checkpointing).
  std::pair<torch::Tensor, torch::Tensor> hidden_states(const torch::Tensor& input_ids,
                                                        KVCache* cache = nullptr,
                                                        const LayerTrace& trace = {});
  /// LM head: hidden [..., hidden] -> logits [..., vocab].
  torch::Tensor logits(const torch::Tensor& hidden);

  /// The decoder layers holding MoE blocks, as (decoder layer index, MoE layer), in order.
  std::vector<std::pair<int64_t, MoELayer>> moe_layers() const;
  DecoderLayer layer(int64_t index) const;
  /// A cache for this model's layers (`capacity` tokens reserved).
  KVCache make_cache(int64_t capacity = 0) const { return KVCache(options.num_layers(), capacity); }

  /// Layer Drop: removes decoder layer `index`'s MoE block (DecoderLayerImpl::drop_mlp).
  void drop_mlp(int64_t index);
  /// Block Drop: removes the listed decoder layers whole. The others are renumbered in order
  /// (options, cache slots and parameter names follow), so the model is a smaller model of its
  /// family; at least one layer stays.
  void remove_layers(const std::vector<int64_t>& indices);

  /// Recompute each decoder layer in the backward pass instead of keeping its activations
  /// (training only; a layer with routing noise refuses, since the recomputation must route as
  /// the forward pass did).
  void set_gradient_checkpointing(bool enabled);
  bool gradient_checkpointing() const { return gradient_checkpointing_; }

  CausalLMOptions options;
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
  torch::nn::Linear lm_head{nullptr};  ///< empty when tied to embed_tokens

 private:
  bool gradient_checkpointing_ = false;
};
TORCH_MODULE(CausalLM);

}  // namespace moeprune::lm
