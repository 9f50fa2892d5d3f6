#include <moeprune/models/vision/trimming.h>

#include <moeprune/compression/residual_similarity.h>

#include <torch/torch.h>

#include <algorithm>

namespace moeprune::compression {
namespace {

// Puts the model back in its mode and capture setting however the scoring ends.
struct CaptureScope {
  VisionTransformer& model;
  bool was_training, captured;
  explicit CaptureScope(VisionTransformer& m)
      : model(m), was_training(m->is_training()), captured(m->capture_block_states) {
    model->eval();
    model->capture_block_states = true;
  }
  ~CaptureScope() {
    model->capture_block_states = captured;
    if (was_training) {
      model->train();
    }
  }
  CaptureScope(const CaptureScope&) = delete;
  CaptureScope& operator=(const CaptureScope&) = delete;
};

// Runs the model over the data (evaluation mode, no grad) with its block states captured.
void for_each_capture(VisionTransformer& model, const CalibrationData& data,
                      const std::function<void(const VisionTransformerOutput&)>& visit) {
  TORCH_CHECK(static_cast<bool>(data), "trimming: no calibration data");
  torch::NoGradGuard no_grad;
  CaptureScope scope(model);
  data([&](const torch::Tensor& images) { visit(model->forward(images)); });
}

}  // namespace

std::map<int64_t, double> moe_layer_similarity(VisionTransformer& model,
                                               const CalibrationData& data) {
  std::map<int64_t, CosineMean> sums;
  for_each_capture(model, data, [&](const VisionTransformerOutput& out) {
    for (const auto& [block, layer] : model->moe_layers()) {
      sums[block].add(out.mlp_states.at(static_cast<size_t>(block)),
                      out.block_states.at(static_cast<size_t>(block) + 1));
    }
  });
  TORCH_CHECK(!sums.empty(), "moe_layer_similarity: the model has no MoE sub-blocks left");
  std::map<int64_t, double> out;
  for (const auto& [block, s] : sums) {
    out[block] = s.mean();
  }
  return out;
}

std::vector<int64_t> layer_drop(VisionTransformer& model, const CalibrationData& data, int64_t n) {
  const auto sim = moe_layer_similarity(model, data);
  TORCH_CHECK(n >= 1 && n <= static_cast<int64_t>(sim.size()), "layer_drop: cannot drop ", n,
              " of the ", sim.size(), " MoE layers");
  const auto dropped = highest_scores({sim.begin(), sim.end()}, n);
  for (const int64_t block : dropped) {
    model->drop_mlp(block);
  }
  return dropped;
}

std::vector<double> block_similarity(VisionTransformer& model, const CalibrationData& data,
                                     int64_t span) {
  const int64_t depth = model->options.depth();
  TORCH_CHECK(span >= 1 && span <= depth, "block_similarity: span should be in [1, ", depth,
              "], got ", span);
  std::vector<CosineMean> sums(static_cast<size_t>(depth - span + 1));
  for_each_capture(model, data, [&](const VisionTransformerOutput& out) {
    for (int64_t i = 0; i + span <= depth; ++i) {
      sums[static_cast<size_t>(i)].add(out.block_states[static_cast<size_t>(i)],
                                       out.block_states[static_cast<size_t>(i + span)]);
    }
  });
  std::vector<double> out;
  for (const auto& s : sums) {
    out.push_back(s.mean());
  }
  return out;
}

std::vector<int64_t> block_drop(VisionTransformer& model, const CalibrationData& data, int64_t n,
                                bool consecutive) {
  const int64_t depth = model->options.depth();
  const auto& gone = model->options.dropped_blocks();
  const auto is_gone = [&](int64_t b) {
    return std::find(gone.begin(), gone.end(), b) != gone.end();
  };
  const int64_t left = depth - static_cast<int64_t>(gone.size());
  TORCH_CHECK(n >= 1 && n < left, "block_drop: cannot drop ", n, " of the ", left,
              " blocks left (at least one stays)");
  std::vector<int64_t> dropped;
  if (!consecutive) {
    const auto sim = block_similarity(model, data, 1);
    std::vector<std::pair<int64_t, double>> scored;
    for (int64_t i = 0; i < depth; ++i) {
      if (!is_gone(i)) {
        scored.emplace_back(i, sim[static_cast<size_t>(i)]);
      }
    }
    dropped = highest_scores(scored, n);
  } else {
    const auto sim = block_similarity(model, data, n);
    int64_t best = -1;
    for (int64_t i = 0; i + n <= depth; ++i) {
      bool free = true;
      for (int64_t b = i; b < i + n; ++b) {
        free = free && !is_gone(b);
      }
      if (free && (best < 0 || sim[static_cast<size_t>(i)] > sim[static_cast<size_t>(best)])) {
        best = i;
      }
    }
    TORCH_CHECK(best >= 0, "block_drop: no run of ", n, " blocks is left to drop");
    for (int64_t b = best; b < best + n; ++b) {
      dropped.push_back(b);
    }
  }
  for (const int64_t b : dropped) {
    model->drop_block(b);
  }
  return dropped;
}

}  // namespace moeprune::compression
