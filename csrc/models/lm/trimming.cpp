#include <moeprune/models/lm/trimming.h>

#include <moeprune/compression/residual_similarity.h>

#include <torch/torch.h>

namespace moeprune::compression {
namespace {

// Runs the model over the calibration batches (evaluation mode, no grad), showing `visit` every
// decoder layer's input and output; the model's mode is restored however it ends.
void trace_layers(lm::CausalLM& model, const CalibrationData& tokens,
                  const lm::CausalLMImpl::LayerTrace& visit) {
  TORCH_CHECK(static_cast<bool>(tokens), "trimming: no calibration tokens");
  struct ModeScope {
    lm::CausalLM& model;
    bool was_training;
    ~ModeScope() { model->train(was_training); }
  } scope{model, model->is_training()};
  model->eval();
  torch::NoGradGuard no_grad;
  int64_t batches = 0;
  tokens([&](const torch::Tensor& ids) {
    model->hidden_states(ids, nullptr, visit);
    ++batches;
  });
  TORCH_CHECK(batches > 0, "trimming: the calibration data gave no batch");
}

}  // namespace

std::map<int64_t, double> moe_layer_similarity(lm::CausalLM& model, const CalibrationData& tokens) {
  std::map<int64_t, CosineMean> sums;
  trace_layers(model, tokens,
               [&](int64_t i, const torch::Tensor&, const lm::DecoderLayerOutput& out) {
                 if (model->layer(i)->is_moe()) {
                   sums[i].add(out.attention_hidden, out.hidden);
                 }
               });
  TORCH_CHECK(!sums.empty(), "moe_layer_similarity: the model has no MoE blocks left");
  std::map<int64_t, double> out;
  for (const auto& [layer, s] : sums) {
    out[layer] = s.mean();
  }
  return out;
}

std::vector<int64_t> layer_drop(lm::CausalLM& model, const CalibrationData& tokens, int64_t n) {
  int64_t moe = 0;
  for (int64_t i = 0; i < model->options.num_layers(); ++i) {
    moe += model->layer(i)->is_moe() ? 1 : 0;
  }
  TORCH_CHECK(n >= 1 && n <= moe, "layer_drop: cannot drop ", n, " of the ", moe, " MoE blocks");
  const auto sim = moe_layer_similarity(model, tokens);
  const auto dropped = highest_scores({sim.begin(), sim.end()}, n);
  for (const int64_t layer : dropped) {
    model->drop_mlp(layer);
  }
  return dropped;
}

std::vector<double> block_similarity(lm::CausalLM& model, const CalibrationData& tokens,
                                     int64_t span) {
  const int64_t depth = model->options.num_layers();
  TORCH_CHECK(span >= 1 && span <= depth, "block_similarity: span should be in [1, ", depth,
              "], got ", span);
  // h_i for the layers a run can start at, compared with h_{i+span} once that layer has run.
  std::vector<CosineMean> sums(static_cast<size_t>(depth - span + 1));
  std::vector<torch::Tensor> inputs(static_cast<size_t>(depth + 1));
  trace_layers(model, tokens,
               [&](int64_t i, const torch::Tensor& input, const lm::DecoderLayerOutput& out) {
                 inputs[static_cast<size_t>(i)] = input;
                 if (i == depth - 1) {
                   inputs[static_cast<size_t>(depth)] = out.hidden;
                   for (int64_t s = 0; s + span <= depth; ++s) {
                     sums[static_cast<size_t>(s)].add(inputs[static_cast<size_t>(s)],
                                                      inputs[static_cast<size_t>(s + span)]);
                   }
                   std::fill(inputs.begin(), inputs.end(), torch::Tensor());
                 }
               });
  std::vector<double> out;
  for (const auto& s : sums) {
    out.push_back(s.mean());
  }
  return out;
}

std::vector<int64_t> block_drop(lm::CausalLM& model, const CalibrationData& tokens, int64_t n,
                                bool consecutive) {
  const int64_t depth = model->options.num_layers();
  TORCH_CHECK(n >= 1 && n < depth, "block_drop: cannot drop ", n, " of the ", depth,
              " decoder layers (at least one stays)");
  const auto sim = block_similarity(model, tokens, consecutive ? n : 1);
  std::vector<int64_t> dropped;
  if (!consecutive) {
    std::vector<std::pair<int64_t, double>> scored;
    for (int64_t i = 0; i < depth; ++i) {
      scored.emplace_back(i, sim[static_cast<size_t>(i)]);
    }
    dropped = highest_scores(scored, n);
  } else {
    // The reference scores a run one layer longer than it drops; this scores the run it drops.
    std::vector<std::pair<int64_t, double>> scored;
    for (int64_t i = 0; i + n <= depth; ++i) {
      scored.emplace_back(i, sim[static_cast<size_t>(i)]);
    }
    const int64_t start = highest_scores(scored, 1).front();
    for (int64_t b = start; b < start + n; ++b) {
      dropped.push_back(b);
    }
  }
  model->remove_layers(dropped);
  return dropped;
}

}  // namespace moeprune::compression
