#pragma once

// Hugging Face checkpoint folders (config.json + model.safetensors or shards) in and out of a
// CausalLM: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE and DeepSeek-MoE (hub model_type "deepseek"),
// with the hub's per-expert tensors or transformers 5.x's fused ones.
#include <moeprune/models/lm/causal_lm.h>

#include <torch/arg.h>

#include <string>

namespace moeprune::lm {

struct LoadOptions {
  /// The model's dtype (kFloat, kBFloat16, kHalf). Tensors already in it stay in the
  /// checkpoint's memory mapping (copy-on-write) instead of being copied.
  TORCH_ARG(torch::Dtype, dtype) = torch::kFloat;
};

/// Reads the model in `directory`. Refuses, naming the key, config values whose math is not
/// implemented (rope scaling types, sliding windows, ...), and names missing or unexpected
/// tensors and wrong shapes. A moeprune "keep" checkpoint (pruned experts zeroed, router kept)
/// comes back with its experts removed, so its layers hold different numbers of experts.
CausalLM load_causal_lm(const std::string& directory, const LoadOptions& options = {});

struct SaveOptions {
  /// Replace an existing folder (written beside it, then swapped in).
  TORCH_ARG(bool, overwrite) = false;
};

/// Writes `model` to the new folder `directory` (config.json + model.safetensors, in the model's
/// dtype, hub per-expert names), atomically: a temporary folder renamed into place. transformers
/// loads the result with the same outputs:
/// - experts removed with the router kept are written as zero experts (they output zero, as
///   moeprune computes), and config.json's "moeprune" section records each layer's state so
///   load_causal_lm removes them again;
/// - with router rows dropped, the held experts are renumbered and the expert count shrinks
///   (every MoE layer must hold the same number; norm_topk_prob becomes true, the renormalised
///   top-k moeprune computes after Expert Drop);
/// - merged experts are written once per original expert (each id gets its group's weights).
/// Factorised (MC-SMoE) experts are refused.
void save_causal_lm(CausalLM& model, const std::string& directory, const SaveOptions& options = {});

}  // namespace moeprune::lm
