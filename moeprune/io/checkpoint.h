#pragma once

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <string>

namespace moeprune {

/// Saves a model's parameters and buffers, optionally its optimizer's state, and `metadata`
/// (JSON text: the model options, the task...) to `path`. The file is written under a temporary
/// name in the same folder and renamed, so an interrupted save never leaves a partial file.
void save_checkpoint(const std::string& path, torch::nn::Module& model, const std::string& metadata,
                     torch::optim::Optimizer* optimizer = nullptr);

/// The metadata a checkpoint was saved with. Throws, naming the file, if it is not a moeprune
/// checkpoint.
std::string read_checkpoint_metadata(const std::string& path);

/// Loads parameters and buffers (and the optimizer state, when given and saved) into `model`.
/// Every parameter and buffer must exist in both with the same shape; otherwise nothing is
/// loaded and the error names the file, the tensor and both shapes.
void load_checkpoint(const std::string& path, torch::nn::Module& model,
                     torch::optim::Optimizer* optimizer = nullptr);

}  // namespace moeprune
