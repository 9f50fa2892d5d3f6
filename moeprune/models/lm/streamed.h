#pragma once

// Work on a Hugging Face checkpoint one decoder layer at a time, so a model larger than memory
// is scored and evaluated on a small machine: the calibration (or evaluation) tokens are
// embedded, then each decoder layer is loaded alone (memory-mapped tensors), every batch's hidden
// states go through it, and it is freed before the next. Peak memory is one layer plus the
// activations; activations above a budget live in a scratch file. The numbers equal the
// in-memory model's: the same batches go through the same operations.
#include <moeprune/hf/scoring.h>
#include <moeprune/models/lm/checkpoint_layers.h>
#include <moeprune/models/lm/evaluation.h>
#include <moeprune/models/lm/stream_journal.h>

#include <torch/arg.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace moeprune::lm {

struct StreamOptions {
  /// Activations held in memory up to this many bytes; above it they live in a memory-mapped
  /// scratch file (deleted at once, so nothing is left behind), which the kernel pages out.
  TORCH_ARG(int64_t, activation_budget_bytes) = int64_t{1} << 30;
  /// Folder for that scratch file.
  TORCH_ARG(std::string, scratch_dir) = "/tmp";
  /// A resumable run (stream_journal.h): the activations and journal_state() are saved after
  /// every decoder layer, and a journal with layers done resumes after them. Null: off.
  TORCH_ARG(std::shared_ptr<StreamJournal>, journal) = nullptr;
  /// The caller's state saved beside each layer's activations (e.g. the scores so far).
  TORCH_ARG(std::function<std::string()>, journal_state) = nullptr;
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

/// Calibration tokens streamed through a checkpoint one decoder layer at a time: the inputs of
/// hf::score_checkpoint for a language model (`moeprune score --calibration`). `tokens` [N, S]
/// int64 run `batch_size` sequences per forward, the model computed in `dtype`; each MoE layer
/// gets the calls it received, as the in-memory model's MoE view gives them.
class StreamedCalibration : public hf::LayerInputs {
 public:
  StreamedCalibration(torch::Tensor tokens, int64_t batch_size, torch::Dtype dtype = torch::kFloat,
                      StreamOptions options = {});
  void visit_layers(const hf::Source& source, const hf::LoadOptions& load, bool with_inputs,
                    const hf::LayerCallsVisitor& visit) const override;
  std::string describe() const override;

 private:
  torch::Tensor tokens_;
  int64_t batch_size_;
  torch::Dtype dtype_;
  StreamOptions options_;
};

}  // namespace moeprune::lm
