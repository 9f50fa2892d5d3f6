#pragma once

// A Hugging Face checkpoint folder opened once: config.json read, its family record found, the
// tensor index memory-mapped and the MoE layers described. Scoring, planning and the writers take
// the same Source, so a `moeprune prune` run reads and checks the folder once, and every step
// sees the same config and tensors.
#include <moeprune/hf/checkpoint.h>
#include <moeprune/io/safetensors.h>

#include <memory>
#include <string>

namespace moeprune::hf {

class Config;  // csrc/hf/config.h: config.json with errors naming the file and key

class Source {
 public:
  /// Opens `directory`. Throws naming the file, the key or the tensor (config.json missing or
  /// not JSON, a model_type without a record, a tensor missing or of the wrong shape).
  explicit Source(const std::string& directory);

  const std::string& directory() const;
  /// The safetensors files (one, or the shards of model.safetensors.index.json), mapped.
  const safetensors::Checkpoint& checkpoint() const;
  /// What describe() reads: the config's sizes and every MoE layer's tensors.
  const ModelInfo& info() const;
  /// config.json as read when the folder was opened.
  const Config& config() const;

 private:
  struct State;
  // Shared and immutable: copies are cheap and see the same mapped files.
  std::shared_ptr<const State> state_;
};

}  // namespace moeprune::hf
