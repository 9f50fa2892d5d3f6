#pragma once

// Saving and loading a VisionTransformer whole: weights plus the configuration that rebuilds its
// shapes (options and MoE layer states), so a pruned, merged or factorised model reloads as it
// was saved.
#include <moeprune/models/vision/vision_transformer.h>

#include <torch/optim/optimizer.h>

#include <string>

namespace moeprune {

/// Saves `model` to `path` (moeprune checkpoint, written under a temporary name and renamed).
/// The metadata is the JSON object `extra` (other fields the caller keeps, e.g. the data set)
/// with "model" set to model->config_json().
void save_vision_transformer(const std::string& path, const VisionTransformer& model,
                             const std::string& extra = "{}",
                             torch::optim::Optimizer* optimizer = nullptr);

/// The model a checkpoint saved by save_vision_transformer (or by the example programs before
/// it existed) holds, with its weights. (To resume training, build the optimizer over it and
/// load_checkpoint the same file into both.)
VisionTransformer load_vision_transformer(const std::string& path);

/// The "model" configuration in a checkpoint's metadata (VisionTransformerImpl::config_json
/// text); throws, naming the file, when there is none.
std::string read_vision_transformer_config(const std::string& path);

}  // namespace moeprune
