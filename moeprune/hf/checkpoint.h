#pragma once

// The MoE layers of Hugging Face checkpoints: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE,
// DeepSeek-MoE, DeepSeek-V2/V3 and GLM-4.5 (the hub's per-expert layout and transformers 5.x's
// fused gate_up_proj/down_proj) and Switch Transformers (encoder and decoder sparse blocks), one
// record per family (csrc/models/lm/families/), looked up by config.json's model_type
// (supported_families() lists them). A checkpoint folder holds config.json plus model.safetensors
// or shards with model.safetensors.index.json.

#include <moeprune/io/safetensors.h>
#include <moeprune/layers/expert_bank_state.h>
#include <moeprune/layers/moe_layer.h>

#include <torch/arg.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace moeprune::hf {

/// Where one MoE layer's tensors are.
struct MoELayerRef {
  int64_t index = 0;  ///< position among the model's MoE layers (the key of scores and plans)
  /// The decoder layer holding it (model.layers.{i}); -1 for encoder-decoder models (Switch).
  int64_t decoder_layer = -1;
  std::string prefix;  ///< e.g. "model.layers.3.block_sparse_moe", "encoder.block.1.layer.1.mlp"
  std::string router;  ///< the router weight [E, d]
  /// DeepSeek-V3 / GLM-4.5: the router's e_score_correction_bias [E] (empty when none); cut and
  /// kept with the router rows.
  std::string router_bias;
  bool fused = false;  ///< transformers 5.x Mixtral: experts.gate_up_proj / experts.down_proj
  int64_t num_experts = 0;
  /// The family that names the layer's tensors (config.json's model_type).
  std::string model_type;
  /// What a moeprune "keep" checkpoint did to the layer (config.json's "moeprune" section):
  /// experts removed with the router rows kept, their weights zero. Plain otherwise.
  MoELayerState state;

  /// The experts `state` removed, increasing (none for a plain layer).
  std::vector<int64_t> removed_experts() const;
  /// Names of expert j's tensors: {w1, w2, w3} = Mixtral {gate, down, up} or Switch {wi, wo};
  /// for a fused layer {gate_up_proj, down_proj} (the same for every j).
  std::vector<std::string> expert_tensors(int64_t j) const;
};

/// What moeprune reads from config.json and the tensor names.
struct ModelInfo {
  std::string model_type;  ///< config's model_type
  int64_t d_model = 0;
  int64_t hidden_dim = 0;  ///< an expert's width: intermediate_size (Mixtral),
                           ///< moe_intermediate_size (Qwen, OLMoE, DeepSeek), d_ff (Switch)
  int64_t num_experts = 0;
  int64_t top_k = 1;
  /// Top-k weights divided by their sum (Mixtral always; Qwen/OLMoE/DeepSeek: norm_topk_prob).
  bool norm_topk_prob = true;
  int64_t expert_capacity = 0;  ///< Switch, per sequence
  double router_jitter = 0.0;
  ExpertActivation activation = ExpertActivation::kSilu;
  /// DeepSeek-V2/V3 and GLM-4.5: group-limited routing (scores, n_group, topk_group,
  /// routed_scaling_factor); unset for plain softmax top-k.
  std::optional<GroupLimitedRoutingOptions> group_routing;
  std::vector<MoELayerRef> layers;

  /// The config key holding the expert count ("num_local_experts" or "num_experts"): the one
  /// config.json uses (transformers 5.x writes num_local_experts for Qwen-MoE too).
  std::string experts_key() const;
  /// The key config.json holds the count under, when it is not the family's usual one.
  std::string config_experts_key;
  /// The MoE layer called `prefix` (or with index `index`); throws listing the known ones.
  const MoELayerRef& layer(const std::string& prefix) const;
};

/// A model family moeprune reads: config.json's model_type and one line saying what the record
/// knows (architecture, which layers are MoE, router, experts).
struct FamilyInfo {
  std::string model_type;
  std::string summary;
};
/// Every supported family, each model_type once, in the registry's order.
std::vector<FamilyInfo> supported_families();

/// Reads `directory`/config.json and finds every MoE layer's tensors in `checkpoint`, checking
/// their shapes against the config. Throws naming the file, the tensor and expected vs. found.
ModelInfo describe(const std::string& directory, const safetensors::Checkpoint& checkpoint);

struct LoadOptions {
  /// false: only the router is read, and the layer's bank holds no expert (for criteria that need
  /// routers only, so a large checkpoint is never read whole).
  TORCH_ARG(bool, expert_weights) = true;
  TORCH_ARG(torch::Dtype, dtype) = torch::kFloat;
};

/// The options of the moeprune layer that computes `ref` (its family's preset with the config's
/// sizes, k, renormalisation, capacity and jitter).
MoELayerOptions moe_layer_options(const ModelInfo& info, const MoELayerRef& ref);

/// Builds one MoE layer (the layer its family's record names, with the config's sizes, k,
/// capacity and jitter) and fills it from the checkpoint. Zeroed experts of a "keep" checkpoint are
/// removed with the router kept (Chowdhury et al.'s semantics): the layer's state is restored.
MoELayer load_moe_layer(const safetensors::Checkpoint& checkpoint, const ModelInfo& info,
                        const MoELayerRef& ref, const LoadOptions& options = {});

/// A checkpoint folder's MoE layers, keyed by MoELayerRef::index.
struct MoEModel {
  ModelInfo info;
  std::map<int64_t, MoELayer> layers;
};
MoEModel load_moe_model(const std::string& directory, const LoadOptions& options = {});

}  // namespace moeprune::hf
