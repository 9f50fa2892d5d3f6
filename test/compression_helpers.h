#pragma once

// Small models and data for the compression tests.
#include <moeprune/models/vision/checkpoint.h>
#include <moeprune/models/vision/moe_view.h>
#include <moeprune/models/vision/vision_transformer.h>

#include <torch/torch.h>

#include <string>

#include "scratch_dir.h"

namespace test {

/// A 28x28 grey-image V-MoE small enough to run in milliseconds: d 16, MLP 24, `depth` blocks,
/// MoE (8 experts, top-2) in `moe_blocks`.
inline moeprune::VisionTransformerOptions tiny_vit(int64_t depth = 2,
                                                   std::vector<int64_t> moe_blocks = {1},
                                                   const std::string& preset = "small_vmoe") {
  return moeprune::VisionTransformerOptions::small(preset, 4)
      .d_model(16)
      .mlp_dim(24)
      .depth(depth)
      .heads(2)
      .moe_blocks(std::move(moe_blocks));
}

/// The model's MoE view, with calibration data when given.
inline std::shared_ptr<moeprune::VisionTransformerMoEView> view(
    const moeprune::VisionTransformer& m, moeprune::CalibrationData data = {}) {
  return moeprune::moe_view(m, std::move(data));
}

/// Calibration data: one fixed batch.
inline moeprune::CalibrationData one_batch(const torch::Tensor& images) {
  return [images](const std::function<void(const torch::Tensor&)>& visit) { visit(images); };
}

inline int64_t parameter_count(const moeprune::VisionTransformer& m) {
  int64_t n = 0;
  for (const auto& p : m->parameters()) {
    n += p.numel();
  }
  return n;
}

/// Evaluation-mode logits without gradients.
inline torch::Tensor eval_logits(moeprune::VisionTransformer& m, const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  m->eval();
  return m->forward(x).logits;
}

/// Saves `m` and loads the checkpoint into a model built from its configuration.
inline moeprune::VisionTransformer round_trip(moeprune::VisionTransformer& m,
                                              const std::string& name) {
  const auto path = scratch_dir() + "/" + name + ".pt";
  moeprune::save_vision_transformer(path, m);
  return moeprune::load_vision_transformer(path);
}

}  // namespace test
