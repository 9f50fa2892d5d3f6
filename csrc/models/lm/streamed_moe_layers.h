#pragma once

// What the streamed passes over calibration data share (StreamedCalibration,
// streamed_expert_usage): [N, S] token ids cut into batches, run through the checkpoint one decoder
// layer at a time, with each MoE layer handed over under its checkpoint key
// (hf::MoELayerRef::index).
#include <moeprune/layers/moe_view.h>
#include <moeprune/models/lm/streamed.h>

#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace moeprune::lm::detail {

/// streamed_hidden_states (streamed.h) whose hook also gets `probe`, which pushes every batch
/// through the decoder layer and discards the outputs (the layer's inputs stay): a hook may
/// probe any number of times (e.g. under a MoECapture, then change the layer) before it calls
/// run() exactly once.
using ProbingLayerHook =
    std::function<void(int64_t index, DecoderLayer& layer, const std::function<void()>& run,
                       const std::function<void()>& probe)>;
std::vector<torch::Tensor> streamed_hidden_states_probing(
    const CheckpointLayers& checkpoint, const std::vector<torch::Tensor>& batches,
    const StreamOptions& options, const ProbingLayerHook& hook,
    const std::function<void(int64_t, int64_t)>& progress = {});

/// Called for each MoE layer with its checkpoint reference, the layer as a view entry, `run`
/// (which pushes every batch through the decoder layer; call it exactly once) and `probe` (as
/// ProbingLayerHook's).
using MoELayerPass =
    std::function<void(const hf::MoELayerRef& ref, const MoELayerEntry& entry,
                       const std::function<void()>& run, const std::function<void()>& probe)>;

/// Streams `calibration` through `checkpoint`, `batch_size` sequences per forward, calling
/// `pass` at each MoE layer (other layers just run). `what` names the caller in errors.
inline void stream_moe_layers(const CheckpointLayers& checkpoint, const torch::Tensor& calibration,
                              int64_t batch_size, const StreamOptions& options,
                              const MoELayerPass& pass, const std::string& what) {
  TORCH_CHECK(calibration.dim() == 2 && calibration.size(0) >= 1 && calibration.size(1) >= 1, what,
              " needs calibration data: [N, S] token ids, got ", calibration.sizes());
  TORCH_CHECK(batch_size >= 1, what, ": batch_size should be >= 1, got ", batch_size);
  std::vector<torch::Tensor> batches;
  for (int64_t start = 0; start < calibration.size(0); start += batch_size) {
    batches.push_back(
        calibration.slice(0, start, std::min(start + batch_size, calibration.size(0))));
  }
  std::map<int64_t, const hf::MoELayerRef*> by_decoder_layer;
  for (const auto& ref : checkpoint.info().layers) by_decoder_layer[ref.decoder_layer] = &ref;
  streamed_hidden_states_probing(
      checkpoint, batches, options,
      [&](int64_t index, DecoderLayer& layer, const std::function<void()>& run,
          const std::function<void()>& probe) {
        if (!layer->is_moe()) {
          run();
          return;
        }
        const auto& ref = *by_decoder_layer.at(index);
        pass(ref, MoELayerEntry{ref.index, ref.prefix, layer->moe_block->moe}, run, probe);
      });
}

}  // namespace moeprune::lm::detail
