#pragma once

// Work on a Hugging Face checkpoint one decoder layer at a time, so a model larger than memory
// is scored and evaluated on a small machine: the calibration (or evaluation) tokens are
// embedded, then each decoder layer is loaded alone (memory-mapped tensors), every batch's hidden
// states go through it, and it is freed before the next. Peak memory is one layer plus the
// activations; activations above a budget live in a scratch file. The numbers equal the
// in-memory model's: the same batches go through the same operations.
#include <moeprune/models/lm/checkpoint_layers.h>
#include <moeprune/models/lm/evaluation.h>
#include <moeprune/pruning/criterion.h>

#include <torch/arg.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace moeprune::lm {

struct StreamOptions {
  /// Activations held in memory up to this many bytes; above it they live in a memory-mapped
  /// scratch file (deleted at once, so nothing is left behind), which the kernel pages out.
  TORCH_ARG(int64_t, activation_budget_bytes) = int64_t{1} << 30;
  /// Folder for that scratch file.
  TORCH_ARG(std::string, scratch_dir) = "/tmp";
};

/// Called once per decoder layer with the loaded layer and `run`, which pushes every batch's
/// hidden states through it; the hook calls run() exactly once (e.g. under a MoECapture).
using LayerHook =
    std::function<void(int64_t index, DecoderLayer& layer, const std::function<void()>& run)>;

/// Runs `batches` (each [B, S] int64 token ids, any lengths) through every decoder layer of
/// `checkpoint`, one layer at a time; returns each batch's hidden states after the last layer
/// (before the final norm), [B, S, d] in the checkpoint's dtype. `progress(layers done, layers)`.
std::vector<torch::Tensor> streamed_hidden_states(
    const CheckpointLayers& checkpoint, const std::vector<torch::Tensor>& batches,
    const StreamOptions& options = {}, const LayerHook& hook = {},
    const std::function<void(int64_t, int64_t)>& progress = {});

/// perplexity() of the checkpoint, layer-streamed: the same windows and batches (batch_size
/// windows per forward), so the same result as load_causal_lm followed by perplexity().
PerplexityResult streamed_perplexity(const CheckpointLayers& checkpoint,
                                     const torch::Tensor& stream,
                                     const PerplexityOptions& options = {},
                                     const StreamOptions& stream_options = {},
                                     const std::function<void(int64_t, int64_t)>& progress = {});

/// Scores every MoE layer of `finetuned` with `criterion`, keyed by the layer's position among
/// the checkpoint's MoE layers (hf::MoELayerRef::index, the key of plans on checkpoints). A
/// criterion that needs data gets the calls its layer received when `calibration` ([N, S] token
/// ids, run `batch_size` sequences at a time) streams through the model; one that does not reads
/// each MoE layer alone (routers only unless it needs expert weights). `pretrained` is needed
/// by criteria that compare with pre-training.
pruning::ExpertScores streamed_scores(const CheckpointLayers& finetuned,
                                      const CheckpointLayers* pretrained,
                                      const pruning::Criterion& criterion,
                                      const torch::Tensor& calibration, int64_t batch_size,
                                      uint64_t seed = 0, const StreamOptions& options = {},
                                      const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace moeprune::lm
