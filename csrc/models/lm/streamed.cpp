#include <moeprune/models/lm/streamed.h>

#include "models/lm/streamed_moe_layers.h"

#include <torch/torch.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>

namespace moeprune::lm {
namespace {

// Every batch's hidden states, in one buffer: memory when it fits the budget, else a scratch
// file mapped shared (unlinked at once; the mapping keeps it alive until the buffer dies).
class ActivationStore {
 public:
  ActivationStore(const std::vector<torch::Tensor>& batches, int64_t d, torch::Dtype dtype,
                  const StreamOptions& options) {
    int64_t total = 0;
    for (const auto& b : batches) {
      offsets_.push_back(total);
      shapes_.push_back({b.size(0), b.size(1), d});
      total += b.size(0) * b.size(1) * d;
    }
    const auto tensor_options = torch::TensorOptions().dtype(dtype);
    const int64_t bytes = total * static_cast<int64_t>(torch::elementSize(dtype));
    if (bytes <= options.activation_budget_bytes()) {
      buffer_ = torch::empty({total}, tensor_options);
      return;
    }
    std::string path = options.scratch_dir() + "/moeprune-activations-XXXXXX";
    const int fd = ::mkstemp(path.data());
    TORCH_CHECK(fd >= 0, options.scratch_dir(), ": cannot create a scratch file for ", bytes,
                " bytes of activations: ", std::strerror(errno));
    const bool sized = ::ftruncate(fd, bytes) == 0;
    const int saved = errno;
    ::close(fd);
    if (!sized) {
      ::unlink(path.c_str());
      TORCH_CHECK(false, path, ": cannot size the activation scratch file to ", bytes,
                  " bytes: ", std::strerror(saved));
    }
    buffer_ = torch::from_file(path, /*shared=*/true, total, tensor_options);
    ::unlink(path.c_str());
  }

  torch::Tensor slot(size_t b) const {
    const auto& s = shapes_[b];
    return buffer_.narrow(0, offsets_[b], s[0] * s[1] * s[2]).view(s);
  }

 private:
  torch::Tensor buffer_;
  std::vector<int64_t> offsets_;
  std::vector<std::vector<int64_t>> shapes_;
};

}  // namespace

std::vector<torch::Tensor> streamed_hidden_states(
    const CheckpointLayers& checkpoint, const std::vector<torch::Tensor>& batches,
    const StreamOptions& options, const LayerHook& hook,
    const std::function<void(int64_t, int64_t)>& progress) {
  torch::NoGradGuard no_grad;
  const auto& o = checkpoint.options();
  for (const auto& b : batches) {
    TORCH_CHECK(b.dim() == 2 && b.size(1) >= 1,
                "streamed_hidden_states: every batch should be "
                "[B, S] token ids, got ",
                b.sizes());
  }
  ActivationStore store(batches, o.hidden_size(), checkpoint.dtype(), options);
  for (size_t b = 0; b < batches.size(); ++b) store.slot(b).copy_(checkpoint.embed(batches[b]));
  checkpoint.release_embedding();
  // Rotary angles per sequence length, as CausalLM computes them for a forward from position 0.
  std::map<int64_t, RotaryAngles> angles;
  for (const auto& b : batches) {
    if (!angles.count(b.size(1))) {
      angles[b.size(1)] =
          rotary_angles(o.attention(), 0, b.size(1), checkpoint.dtype(), torch::kCPU);
    }
  }
  for (int64_t i = 0; i < checkpoint.num_layers(); ++i) {
    auto layer = checkpoint.layer(i);
    const auto run = [&] {
      for (size_t b = 0; b < batches.size(); ++b) {
        auto h = store.slot(b);
        // The output (a new tensor) replaces the input, which is not needed afterwards.
        h.copy_(layer->forward(h, angles.at(h.size(1))).hidden);
      }
    };
    if (hook) {
      hook(i, layer, run);
    } else {
      run();
    }
    layer = nullptr;  // free the layer's own memory, then its mapped pages
    checkpoint.release_layer(i);
    if (progress) progress(i + 1, checkpoint.num_layers());
  }
  std::vector<torch::Tensor> out;
  for (size_t b = 0; b < batches.size(); ++b) out.push_back(store.slot(b));
  return out;
}

PerplexityResult streamed_perplexity(const CheckpointLayers& checkpoint,
                                     const torch::Tensor& stream, const PerplexityOptions& options,
                                     const StreamOptions& stream_options,
                                     const std::function<void(int64_t, int64_t)>& progress) {
  const auto batches = perplexity_batches(stream, options);
  std::vector<torch::Tensor> ids;
  for (const auto& batch : batches) ids.push_back(batch.input_ids);
  const auto hidden = streamed_hidden_states(checkpoint, ids, stream_options, {}, progress);
  torch::NoGradGuard no_grad;
  PerplexityResult result;
  for (size_t b = 0; b < batches.size(); ++b) {
    add_scored(result, batches[b], nll_of_logits(checkpoint.logits(hidden[b]), ids[b]));
  }
  return result;
}

pruning::ExpertScores streamed_scores(const CheckpointLayers& finetuned,
                                      const CheckpointLayers* pretrained,
                                      const pruning::Criterion& criterion,
                                      const torch::Tensor& calibration, int64_t batch_size,
                                      uint64_t seed, const StreamOptions& options,
                                      const std::function<void(int64_t, int64_t)>& progress) {
  TORCH_CHECK(!criterion.needs_pretrained() || pretrained != nullptr, "criterion ",
              criterion.name(), " compares with the pre-trained model: give its checkpoint");
  const auto& info = finetuned.info();
  // The pre-trained layer matching each fine-tuned one (same decoder layer), routers only unless
  // the criterion reads expert weights.
  const auto load =
      hf::LoadOptions().expert_weights(criterion.needs_expert_weights()).dtype(finetuned.dtype());
  const auto pretrained_entry = [&](const hf::MoELayerRef& ref) {
    const auto& pre_info = pretrained->info();
    TORCH_CHECK(static_cast<size_t>(ref.index) < pre_info.layers.size(), pretrained->directory(),
                " has no MoE layer ", ref.index, " (", ref.prefix, ")");
    const auto& pre_ref = pre_info.layers[static_cast<size_t>(ref.index)];
    TORCH_CHECK(pre_ref.prefix == ref.prefix && pre_ref.num_experts == ref.num_experts,
                pretrained->directory(), ": MoE layer ", ref.index, " is ", pre_ref.prefix,
                " with ", pre_ref.num_experts, " experts; the fine-tuned model's is ", ref.prefix,
                " with ", ref.num_experts);
    return MoELayerEntry{ref.index, pre_ref.prefix,
                         hf::load_moe_layer(pretrained->checkpoint(), pre_info, pre_ref, load)};
  };
  pruning::ExpertScores scores;
  const int64_t total = static_cast<int64_t>(info.layers.size());
  if (!criterion.needs_data()) {
    // Nothing to run: each MoE layer alone.
    const LayerCalls none;
    for (const auto& ref : info.layers) {
      const MoELayerEntry entry{ref.index, ref.prefix,
                                hf::load_moe_layer(finetuned.checkpoint(), info, ref, load)};
      MoELayerEntry pre;
      if (criterion.needs_pretrained()) pre = pretrained_entry(ref);
      scores[ref.index] = pruning::score_layer(
          criterion, {entry, criterion.needs_pretrained() ? &pre : nullptr, none, seed});
      if (progress) progress(ref.index + 1, total);
    }
    return scores;
  }
  int64_t done = 0;
  detail::stream_moe_layers(
      finetuned, calibration, batch_size, options,
      [&](const hf::MoELayerRef& ref, const MoELayerEntry& entry,
          const std::function<void()>& run) {
        MoELayerEntry pre;
        if (criterion.needs_pretrained()) pre = pretrained_entry(ref);
        MoECapture capture({entry}, criterion.needs_inputs());
        run();
        scores[ref.index] = pruning::score_layer(
            criterion,
            {entry, criterion.needs_pretrained() ? &pre : nullptr, capture.calls(ref.index), seed});
        if (progress) progress(++done, total);
      },
      "criterion " + criterion.name());
  return scores;
}

}  // namespace moeprune::lm
