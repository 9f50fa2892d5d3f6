#pragma once

// The checkpoint half that Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-MoE, DeepSeek-V2/V3 and GLM-4.5
// share: the MoE block is `model.layers.{i}.mlp` with a router `mlp.gate.weight` [E, d] and
// SwiGLU experts `mlp.experts.{j}.{gate,up,down}_proj.weight` (or transformers 5.x's fused
// `mlp.experts.gate_up_proj` / `down_proj`). The records say which keys hold the sizes, which
// decoder layers are MoE, norm_topk_prob's default and the router.
#include "models/lm/families/family.h"

#include <string>
#include <vector>

namespace moeprune::lm {

class MlpExpertsFamily : public Family {
 public:
  std::vector<hf::MoELayerRef> describe(const hf::Config& config,
                                        const safetensors::Checkpoint& checkpoint,
                                        hf::ModelInfo& info) const override;
  std::vector<std::string> expert_tensors(const hf::MoELayerRef& ref, int64_t j) const override;
  std::string expert_stem(const hf::MoELayerRef& ref) const override;
  MoELayerOptions layer_options(const hf::ModelInfo& info, const hf::MoELayerRef& ref,
                                int64_t hidden_dim) const override;
  void load_experts(const safetensors::Checkpoint& checkpoint, const hf::ModelInfo& info,
                    const hf::MoELayerRef& ref, ExpertBank& bank) const override;
  /// Cut router rows: moeprune renormalises the top-k weights over the survivors; transformers
  /// does so for these families only with norm_topk_prob.
  void write_cut_config(nlohmann::ordered_json& config) const override;

 protected:
  virtual bool norm_topk_prob_default() const { return false; }
  /// Whether decoder layer i holds a MoE block.
  virtual bool is_moe_layer(const hf::Config& config, int64_t i) const = 0;
  /// A group-limited router's options from the config (DeepSeek-V2/V3, GLM-4.5); none for the
  /// plain softmax top-k router. May change info's norm_topk_prob.
  virtual std::optional<GroupLimitedRoutingOptions> group_routing(const hf::Config& config,
                                                                  hf::ModelInfo& info) const;
  /// Whether the router has an e_score_correction_bias tensor.
  virtual bool router_has_bias() const { return false; }
  /// The key config.json holds the expert count under: experts_key(), or num_local_experts,
  /// which transformers 5.x writes for Qwen-MoE (attribute_map).
  std::string count_key(const hf::Config& config) const;
};

}  // namespace moeprune::lm
