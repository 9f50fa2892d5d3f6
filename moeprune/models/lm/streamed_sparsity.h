#pragma once

// Sparsity inside the experts of a Hugging Face checkpoint without loading it whole
// (compression/expert_sparsity.h for the methods; METHODS.md section 10): the calibration tokens
// stream through the model one decoder layer at a time; at each MoE layer the tokens' inputs and
// routing are captured, every expert is pruned on its own statistics, and, sequentially, the
// pruned layer produces the next layer's inputs. Each MoE layer's experts go to a scratch file in
// the checkpoint's dtype; hf::write_sparsified_checkpoint then writes the folder. Peak memory is
// one decoder layer, its captured inputs and one expert's statistics, plus the activations (which
// spill to a scratch file above StreamOptions' budget).
#include <moeprune/compression/expert_sparsity.h>
#include <moeprune/compression/linear_sparsity.h>
#include <moeprune/hf/pruning.h>
#include <moeprune/models/lm/checkpoint_layers.h>
#include <moeprune/models/lm/streamed.h>

#include <torch/arg.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace moeprune::lm {

struct SparsifyCheckpointOptions {
  TORCH_ARG(compression::ExpertSparsityOptions, sparsity);
  /// Calibration sequences per forward pass.
  TORCH_ARG(int64_t, batch_size) = 4;
  /// Activation spill and the sparsified experts' scratch files.
  TORCH_ARG(StreamOptions, stream);
};

struct SparsifyCheckpointResult {
  /// One per MoE layer, in the checkpoint's order (hf::MoELayerRef::index).
  std::vector<compression::LayerSparsityReport> layers;
  /// One per group of dense layers (a decoder layer's layers of one role), in order.
  std::vector<compression::LinearSparsityReport> linears;
  hf::WriteReport report;
};

/// Sparsifies the experts of every MoE layer of `checkpoint` (options.sparsity().layers(): only
/// those, by MoELayerRef::index), and the dense layers options.sparsity().targets() names in
/// every decoder layer (then layers() must be empty), and writes the new folder `out` (which must
/// not exist). A decoder layer's experts and dense layers are calibrated from one pass of it.
/// `calibration`: [N, S] token ids, needed unless the method is magnitude. The experts are
/// pruned in the checkpoint's load dtype, then rounded to each tensor's stored dtype, and the
/// rounded weights are what the next layer's calibration runs through. `on_layer` and
/// `on_linears` are called as each MoE layer and group of dense layers is done.
SparsifyCheckpointResult sparsify_checkpoint(
    const CheckpointLayers& checkpoint, const torch::Tensor& calibration, const std::string& out,
    const SparsifyCheckpointOptions& options = {}, const hf::WriteOptions& write = {},
    const compression::LayerSparsityCallback& on_layer = {},
    const compression::LinearSparsityCallback& on_linears = {});

/// The record write_sparsified_checkpoint stores in config.json for `options` (method, pattern,
/// calibration).
std::string sparsity_record(const compression::ExpertSparsityOptions& options);

}  // namespace moeprune::lm
