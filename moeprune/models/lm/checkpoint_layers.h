#pragma once

// A Hugging Face checkpoint folder read one decoder layer at a time, for work on models larger
// than memory (layer-streamed scoring and evaluation, models/lm/streamed.h): the embedding, each
// decoder layer and the LM head are built on demand from the memory-mapped tensors, and a layer
// is freed as soon as its module is dropped.
#include <moeprune/hf/checkpoint.h>
#include <moeprune/hf/source.h>
#include <moeprune/io/safetensors.h>
#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/decoder_layer.h>

#include <memory>
#include <string>
#include <vector>

namespace moeprune::lm {

class CheckpointLayers {
 public:
  /// The model of an opened checkpoint folder (no weights read yet). Refuses what
  /// load_causal_lm refuses.
  explicit CheckpointLayers(hf::Source source, const LoadOptions& options = {});
  /// Opens `directory` (hf::Source) first.
  explicit CheckpointLayers(const std::string& directory, const LoadOptions& options = {});

  const hf::Source& source() const { return source_; }
  const std::string& directory() const { return source_.directory(); }
  const CausalLMOptions& options() const { return options_; }
  const hf::ModelInfo& info() const { return source_.info(); }
  const safetensors::Checkpoint& checkpoint() const { return source_.checkpoint(); }
  torch::Dtype dtype() const { return load_.dtype(); }
  int64_t num_layers() const { return options_.num_layers(); }

  /// Token embeddings of `input_ids` [B, S] (int64, checked against the vocabulary): [B, S, d].
  torch::Tensor embed(const torch::Tensor& input_ids) const;
  /// Decoder layer `index` with all its tensors (routed experts too), in evaluation mode; a
  /// Layer Drop recorded in config.json is applied, and a "keep" checkpoint's zeroed experts
  /// are removed, as load_causal_lm does.
  DecoderLayer layer(int64_t index) const;
  /// The final norm and the LM head: hidden [..., d] -> logits [..., vocab].
  torch::Tensor logits(const torch::Tensor& hidden) const;
  /// Returns the memory of decoder layer `index`'s tensors to the kernel (their pages of the
  /// memory-mapped files; read again from the file if used later). Call once the layer is done,
  /// so the resident memory stays one layer, not every layer read so far.
  void release_layer(int64_t index) const;
  /// The same for the token embedding (after embedding every batch).
  void release_embedding() const;
  /// The Hugging Face name of decoder layer `index`'s MoE block ("model.layers.3.mlp").
  std::string moe_name(int64_t index) const;

 private:
  hf::Source source_;
  LoadOptions load_;
  CausalLMOptions options_;
  std::vector<int64_t> dropped_mlp_;
};

}  // namespace moeprune::lm
