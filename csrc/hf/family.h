#pragma once

// The checkpoint half of a model family's record: how its config.json names the sizes, where its
// MoE layers' tensors are and how its experts are named, which MoE layer computes as it does, and
// what a pruned checkpoint's config.json rewrites. hf/ knows families only through this
// interface. The records themselves (one file per model_type, checkpoint and model halves
// together) are csrc/models/lm/families/; their one list, which defines families() below, is
// csrc/models/lm/families/registry.cpp (hf/ declares the lookup and never includes a record).
#include <moeprune/hf/checkpoint.h>

#include "hf/config.h"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace moeprune::hf {

class Family {
 public:
  virtual ~Family() = default;
  /// The config.json model_type this record reads.
  virtual std::string model_type() const = 0;
  /// One line for `moeprune inspect --families`: the architecture, which layers are MoE, the
  /// router and the experts.
  virtual std::string summary() const = 0;
  /// The config.json key holding the expert count ("num_local_experts", "num_experts").
  virtual std::string experts_key() const = 0;
  /// Reads the sizes into `info` (d_model, hidden_dim, num_experts, top_k, ...) and returns every
  /// MoE layer's tensors in `checkpoint` (prefix, router, layout; index and pruning state are
  /// filled by describe()), each shape checked against the config.
  virtual std::vector<MoELayerRef> describe(const Config& config,
                                            const safetensors::Checkpoint& checkpoint,
                                            ModelInfo& info) const = 0;
  /// Names of expert j's tensors in the bank's order {w1, w2[, w3]}; for a fused layout the
  /// stacked tensors (the same for every j).
  virtual std::vector<std::string> expert_tensors(const MoELayerRef& ref, int64_t j) const = 0;
  /// What precedes the expert index in per-expert tensor names ("<prefix>.experts."), so a cut
  /// checkpoint can renumber them.
  virtual std::string expert_stem(const MoELayerRef& ref) const = 0;
  /// Options of the moeprune layer that computes this family's MoE block, with `hidden_dim`
  /// (1 when only the router is read).
  virtual MoELayerOptions layer_options(const ModelInfo& info, const MoELayerRef& ref,
                                        int64_t hidden_dim) const = 0;
  /// Copies the experts of `ref` into `bank` (its weights are [E, in, out]), converting to the
  /// bank's dtype.
  virtual void load_experts(const safetensors::Checkpoint& checkpoint, const ModelInfo& info,
                            const MoELayerRef& ref, ExpertBank& bank) const = 0;
  /// What config.json must say once router rows are cut, so that transformers computes what the
  /// cut moeprune layer computes (it renormalises the top-k weights over the survivors).
  virtual void write_cut_config(nlohmann::ordered_json& config) const = 0;
};

/// Every family record, each model_type once (defined by csrc/models/lm/families/registry.cpp).
const std::vector<const Family*>& families();

/// The family that reads `model_type`; throws naming the config file and the supported types.
const Family& family_of(const std::string& model_type, const std::string& config_path = "");

// Shared by the families.
namespace detail {
/// Throws naming the file and the tensor unless `name` exists with `shape`.
void expect_shape(const safetensors::Checkpoint& checkpoint, const std::string& name,
                  const std::vector<int64_t>& shape, const std::string& config_path);
/// The expert activation a config names (hidden_act, dense_act_fn).
ExpertActivation activation_of(const std::string& name, const std::string& config_path);
/// transformers 5.x's fused experts of a SwiGLU layer at `ref.prefix`: {experts.gate_up_proj
/// [E, 2F, d] (gate rows first), experts.down_proj [E, d, F]}, the same tensors for every expert.
std::vector<std::string> fused_gated_experts(const MoELayerRef& ref);
/// Checks a SwiGLU layer's expert tensors against the sizes: per expert {gate, down, up} as
/// `family` names them, or fused gate_up_proj [E, 2F, d] (gate rows first) / down_proj [E, d, F].
void expect_gated_experts(const safetensors::Checkpoint& checkpoint, const MoELayerRef& ref,
                          int64_t d_model, int64_t hidden_dim, const Family& family,
                          const std::string& config_path);
/// Copies a SwiGLU layer's experts into `bank` (w1 gate, w3 up, w2 down, each [E, in, out]) from
/// either layout, converting to the bank's dtype.
void load_gated_experts(const safetensors::Checkpoint& checkpoint, const MoELayerRef& ref,
                        int64_t hidden_dim, ExpertBank& bank, const Family& family);
}  // namespace detail

}  // namespace moeprune::hf
