#include <moeprune/hf/pruning.h>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <memory>
#include <set>

namespace moeprune::hf {

pruning::ExpertScores score_checkpoint(const ScoreOptions& options,
                                       const pruning::CriterionRegistry& registry) {
  const auto criterion = registry.create(options.criterion);
  TORCH_CHECK(!options.finetuned.empty(), criterion->name(), ": --finetuned is required");
  safetensors::Checkpoint finetuned(options.finetuned);
  const auto info = describe(options.finetuned, finetuned);
  std::unique_ptr<safetensors::Checkpoint> pretrained;
  ModelInfo pre_info;
  if (criterion->needs_pretrained()) {
    TORCH_CHECK(!options.pretrained.empty(), criterion->name(),
                " compares with the pre-trained model: give --pretrained");
    pretrained = std::make_unique<safetensors::Checkpoint>(options.pretrained);
    pre_info = describe(options.pretrained, *pretrained);
    TORCH_CHECK(pre_info.layers.size() == info.layers.size(), options.pretrained, " has ",
                pre_info.layers.size(), " MoE layers, ", options.finetuned, " has ",
                info.layers.size());
  }
  std::unique_ptr<safetensors::File> calibration;
  if (criterion->needs_data() || criterion->needs_inputs()) {
    TORCH_CHECK(!options.calibration.empty(), criterion->name(),
                " needs calibration data: ScoreOptions::calibration (moeprune --moe-inputs), a "
                "safetensors file with each MoE layer's input hidden states under the layer's "
                "name; for a language model, stream tokens through it instead (moeprune "
                "--calibration, lm::streamed_scores; docs/checkpoints.md)");
    calibration = std::make_unique<safetensors::File>(options.calibration);
  }
  const auto load = LoadOptions().expert_weights(criterion->needs_expert_weights());
  pruning::ExpertScores scores;
  const auto total = static_cast<int64_t>(info.layers.size());
  for (const auto& ref : info.layers) {
    // One layer at a time, so memory holds at most one layer (two with --pretrained).
    LayerTokens tokens;
    if (calibration) {
      TORCH_CHECK(calibration->contains(ref.prefix), options.calibration,
                  ": no hidden states for MoE layer '", ref.prefix, "'");
      const auto& ci = calibration->info(ref.prefix);
      TORCH_CHECK(!ci.shape.empty() && ci.shape.back() == info.d_model, options.calibration,
                  ": tensor '", ref.prefix, "' has last dimension ",
                  ci.shape.empty() ? 0 : ci.shape.back(), ", the model's hidden size is ",
                  info.d_model);
      const auto* file = calibration.get();
      tokens = [file, index = ref.index, prefix = ref.prefix](const auto& visit) {
        visit(index, file->tensor(prefix).to(torch::kFloat));
      };
    }
    const LayerMapView ft({{ref.index, ref.prefix, load_moe_layer(finetuned, info, ref, load)}},
                          tokens);
    std::unique_ptr<LayerMapView> pre;
    if (pretrained) {
      const auto& pre_ref = pre_info.layers[static_cast<size_t>(ref.index)];
      // Matched by position: the two may use different layouts (hub vs. fused Mixtral).
      TORCH_CHECK(pre_ref.num_experts == ref.num_experts, "MoE layer ", ref.index, " has ",
                  pre_ref.num_experts, " experts in ", options.pretrained, " (", pre_ref.prefix,
                  ") and ", ref.num_experts, " in ", options.finetuned, " (", ref.prefix, ")");
      pre = std::make_unique<LayerMapView>(std::vector<MoELayerEntry>{
          {ref.index, pre_ref.prefix, load_moe_layer(*pretrained, pre_info, pre_ref, load)}});
    }
    scores[ref.index] =
        pruning::score_experts(*criterion, ft, pre.get(), options.seed).at(ref.index);
    if (options.progress) {
      options.progress(ref.index + 1, total);
    }
  }
  return scores;
}

std::shared_ptr<LayerMapView> router_view(const safetensors::Checkpoint& checkpoint,
                                          const ModelInfo& info) {
  nlohmann::json signature = {{"hf_model_type", info.model_type},
                              {"d_model", info.d_model},
                              {"num_experts", info.num_experts}};
  std::vector<MoELayerEntry> layers;
  for (const auto& ref : info.layers) {
    signature["moe_layers"].push_back(ref.prefix);
    layers.push_back({ref.index, ref.prefix,
                      load_moe_layer(checkpoint, info, ref, LoadOptions().expert_weights(false))});
  }
  return std::make_shared<LayerMapView>(std::move(layers), LayerTokens{}, signature.dump());
}

std::vector<int64_t> layer_keys(const ModelInfo& info, const std::vector<std::string>& names) {
  std::set<int64_t> keys;
  for (const auto& name : names) {
    keys.insert(info.layer(name).index);
  }
  return {keys.begin(), keys.end()};
}

}  // namespace moeprune::hf
