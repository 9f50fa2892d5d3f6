#pragma once

// A causal-LM family's record: everything moeprune knows about one config.json model_type, in
// one file under families/. It is the checkpoint half (hf::Family: sizes, MoE layers, router,
// expert tensor names, what a cut checkpoint rewrites) and the model half below (config keys
// and defaults, how config.json maps to CausalLMOptions and back, the dense tensors' names, what
// is refused). A record that derives from another states only what differs, as transformers'
// modular files do ("qwen3_moe = qwen2_moe + q/k norm - shared expert"). The loader, the
// streamed loader, the savers, the writers, `inspect` and the CLI read records; no other file
// compares model_type strings.
#include <moeprune/models/lm/options.h>

#include "hf/config.h"
#include "hf/family.h"

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

namespace moeprune::lm {

/// The defaults of a family's configuration class for keys a config.json may leave out.
struct FamilyDefaults {
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  double aux_loss_coef = 0.001;
};

class Family : public hf::Family {
 public:
  /// transformers' class name, written to config.json's "architectures".
  virtual std::string architecture() const = 0;
  virtual FamilyDefaults defaults() const { return {}; }
  /// The MoE block under model.layers.{i} ("block_sparse_moe", "mlp").
  virtual std::string moe_block() const { return "mlp"; }
  /// The shared expert's module under the MoE block ("shared_expert", "shared_experts"; "" when
  /// the family has none).
  virtual std::string shared_expert() const { return ""; }
  /// The config key weighting the load-balancing loss.
  virtual std::string aux_loss_key() const { return "router_aux_loss_coef"; }
  /// The config key counting multi-token-prediction layers stored after the decoder layers, which
  /// transformers skips on load ("" when the family has none).
  virtual std::string prediction_layers_key() const { return ""; }

  /// Reading config.json: after the keys every family shares (sizes, heads, norms, RoPE), the
  /// family's attention (biases, q/k norms, latent attention, partial or interleaved rotary) and
  /// model (dense MLP width, shared experts) keys; throws naming a key whose value changes the
  /// math in a way not implemented. The base reads one attention_bias for q, k, v and o and
  /// refuses clip_qkv and partial rotary; it reads no dense width and no shared experts.
  virtual void read_attention(const hf::Config& config, AttentionOptions& attention) const;
  virtual void read_model(const hf::Config& config, CausalLMOptions& options) const;

  /// Writing config.json: the rotary keys (after head_dim), the attention keys (after
  /// rope_theta), the routing keys (after the common ones), the dense width, which layers are
  /// MoE and the shared experts. `c` already holds the source's keys.
  virtual void write_rotary(const AttentionOptions& attention, nlohmann::ordered_json& c) const;
  virtual void write_attention(const AttentionOptions& attention, nlohmann::ordered_json& c) const;
  virtual void write_routing(const MoELayerOptions& moe, nlohmann::ordered_json& c) const;
  virtual void write_dense_width(const CausalLMOptions& options, nlohmann::ordered_json& c) const;
  virtual void write_moe_layers(const CausalLMOptions& options,
                                nlohmann::ordered_json& c) const = 0;
  virtual void write_shared_experts(const CausalLMOptions& options,
                                    nlohmann::ordered_json& c) const;
  /// The config key of an expert's width ("intermediate_size", "moe_intermediate_size").
  virtual std::string width_key() const = 0;
};

/// Every causal-LM record (defined by families/registry.cpp).
const std::vector<const Family*>& families();
/// Adds a record after the built-in ones (a family defined outside the library, e.g. in a test);
/// throws if its model_type is known. Call it before loading models, from one thread.
void add_family(std::unique_ptr<Family> record);
/// The record of `model_type`; throws naming the config file and the supported types.
const Family& family(const std::string& model_type, const std::string& config_path = "");

namespace detail {
/// Throws: config.json's `key` has a value moeprune does not compute (`why`).
[[noreturn]] void refuse(const hf::Config& config, const std::string& key, const std::string& why);
/// Indices of the layers `moe_layers` marks dense, increasing.
std::vector<int64_t> dense_layers(const std::vector<bool>& moe_layers);
/// partial_rotary_factor (top level or in rope_parameters; `fallback` when neither says), checked
/// in (0, 1]; a factor other than 1 is refused unless `allowed`.
double partial_rotary_factor(const hf::Config& config, double fallback, bool allowed);
/// A list of layer indices (null or absent: none).
std::vector<int64_t> layer_list(const hf::Config& config, const std::string& key);
}  // namespace detail

}  // namespace moeprune::lm
