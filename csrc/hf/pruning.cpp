#include <moeprune/hf/pruning.h>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <set>

namespace moeprune::hf {

std::shared_ptr<LayerMapView> router_view(const Source& source) {
  const auto& info = source.info();
  nlohmann::json signature = {{"hf_model_type", info.model_type},
                              {"d_model", info.d_model},
                              {"num_experts", info.num_experts}};
  std::vector<MoELayerEntry> layers;
  for (const auto& ref : info.layers) {
    signature["moe_layers"].push_back(ref.prefix);
    layers.push_back(
        {ref.index, ref.prefix,
         load_moe_layer(source.checkpoint(), info, ref, LoadOptions().expert_weights(false))});
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
