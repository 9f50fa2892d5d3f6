#include <moeprune/models/lm/streamed.h>

#include "models/lm/streamed_moe_layers.h"

#include <torch/torch.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <utility>

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
  detail::ProbingLayerHook probing;
  if (hook) {
    probing = [&hook](int64_t index, DecoderLayer& layer, const std::function<void()>& run,
                      const std::function<void()>& /*probe*/) { hook(index, layer, run); };
  }
  return detail::streamed_hidden_states_probing(checkpoint, batches, options, probing, progress);
}

std::vector<torch::Tensor> detail::streamed_hidden_states_probing(
    const CheckpointLayers& checkpoint, const std::vector<torch::Tensor>& batches,
    const StreamOptions& options, const ProbingLayerHook& hook,
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
  const auto& journal = options.journal();
  const int64_t start = journal != nullptr ? journal->layers_done() : 0;
  if (start > 0) {
    // A resumed run: the hidden states after `start` layers, bit for bit as they were.
    TORCH_CHECK(start <= checkpoint.num_layers(), journal->directory(), ": the journal has ", start,
                " decoder layers done, the model has ", checkpoint.num_layers());
    const auto saved = journal->activations();
    TORCH_CHECK(saved.size() == batches.size(), journal->directory(), ": the journal holds ",
                saved.size(), " batches, this run has ", batches.size());
    for (size_t b = 0; b < batches.size(); ++b) {
      auto slot = store.slot(b);
      TORCH_CHECK(saved[b].sizes() == slot.sizes() && saved[b].scalar_type() == slot.scalar_type(),
                  journal->directory(), ": the journal's batch ", b, " is ", saved[b].sizes(), " ",
                  saved[b].scalar_type(), ", this run's ", slot.sizes(), " ", slot.scalar_type());
      slot.copy_(saved[b]);
    }
  } else {
    for (size_t b = 0; b < batches.size(); ++b) store.slot(b).copy_(checkpoint.embed(batches[b]));
  }
  checkpoint.release_embedding();
  // Rotary angles per sequence length, as CausalLM computes them for a forward from position 0.
  std::map<int64_t, RotaryAngles> angles;
  for (const auto& b : batches) {
    if (!angles.count(b.size(1))) {
      angles[b.size(1)] =
          rotary_angles(o.attention(), 0, b.size(1), checkpoint.dtype(), torch::kCPU);
    }
  }
  for (int64_t i = start; i < checkpoint.num_layers(); ++i) {
    auto layer = checkpoint.layer(i);
    const auto run = [&] {
      for (size_t b = 0; b < batches.size(); ++b) {
        auto h = store.slot(b);
        // The output (a new tensor) replaces the input, which is not needed afterwards.
        h.copy_(layer->forward(h, angles.at(h.size(1))).hidden);
      }
    };
    const auto probe = [&] {
      for (size_t b = 0; b < batches.size(); ++b) {
        const auto h = store.slot(b);
        layer->forward(h, angles.at(h.size(1)));
      }
    };
    if (hook) {
      hook(i, layer, run, probe);
    } else {
      run();
    }
    layer = nullptr;  // free the layer's own memory, then its mapped pages
    checkpoint.release_layer(i);
    if (journal != nullptr) {
      std::vector<torch::Tensor> slots;
      for (size_t b = 0; b < batches.size(); ++b) slots.push_back(store.slot(b));
      journal->save(i + 1, slots, options.journal_state() ? options.journal_state()() : "");
    }
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

StreamedCalibration::StreamedCalibration(torch::Tensor tokens, int64_t batch_size,
                                         torch::Dtype dtype, StreamOptions options)
    : tokens_(std::move(tokens)),
      batch_size_(batch_size),
      dtype_(dtype),
      options_(std::move(options)) {}

void StreamedCalibration::visit_layers(const hf::Source& source, const hf::LoadOptions& /*load*/,
                                       bool with_inputs, const hf::LayerCallsVisitor& visit) const {
  // The whole decoder layer runs, so every MoE layer is read with its experts, in dtype_.
  const CheckpointLayers model(source, LoadOptions().dtype(dtype_));
  detail::stream_moe_layers(
      model, tokens_, batch_size_, options_,
      [&](const hf::MoELayerRef& ref, const MoELayerEntry& entry, const std::function<void()>& run,
          const std::function<void()>& /*probe*/) {
        MoECapture capture({entry}, with_inputs);
        run();
        visit(ref, entry, capture.calls(ref.index));
      },
      "scoring");
}

std::string StreamedCalibration::describe() const {
  return "streamed calibration of " + (tokens_.defined() && tokens_.dim() == 2
                                           ? std::to_string(tokens_.size(0)) + " sequences of " +
                                                 std::to_string(tokens_.size(1)) + " tokens"
                                           : std::string("no tokens"));
}

}  // namespace moeprune::lm
