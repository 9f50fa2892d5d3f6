#pragma once

// Switch Transformers checkpoint folders (config.json + model.safetensors or shards, hub names)
// in and out of a SwitchTransformer.
#include <moeprune/models/seq2seq/switch_transformer.h>

#include <torch/arg.h>

#include <string>

namespace moeprune::seq2seq {

struct LoadOptions {
  /// The model's dtype (kFloat, kBFloat16, kHalf, kDouble).
  TORCH_ARG(torch::Dtype, dtype) = torch::kFloat;
};

/// The options config.json in `directory` describes. Refuses, naming the key, what is not
/// implemented (gated activations, router biases, another model_type).
SwitchTransformerOptions read_switch_options(const std::string& directory);

/// Reads the model in `directory` (model_type "switch_transformers"). Names missing or unexpected
/// tensors and wrong shapes; the MoE layers come from the checkpoint reader (hf/checkpoint.h), so
/// a moeprune "keep" checkpoint comes back with its experts removed.
SwitchTransformer load_switch_transformer(const std::string& directory,
                                          const LoadOptions& options = {});

struct SaveOptions {
  /// Replace an existing folder (written beside it, then swapped in).
  TORCH_ARG(bool, overwrite) = false;
};

/// Writes `model` to the new folder `directory` (config.json + model.safetensors in the model's
/// dtype, hub names), through a temporary folder renamed into place. transformers loads it with
/// the same outputs: removed experts (router kept) are written as zero experts, merged experts
/// once per original id with their group's weights. Refuses factorised experts and dropped
/// router columns (a hub config has one expert count and no renormalisation for Switch).
void save_switch_transformer(SwitchTransformer& model, const std::string& directory,
                             const SaveOptions& options = {});

}  // namespace moeprune::seq2seq
