#include <moeprune/models/vision/checkpoint.h>

#include <moeprune/io/checkpoint.h>

#include "io/json.h"
#include "layers/spread_check.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

namespace moeprune {

void save_vision_transformer(const std::string& path, const VisionTransformer& model,
                             const std::string& extra, torch::optim::Optimizer* optimizer) {
  const auto what = "checkpoint " + path + ": the extra metadata";
  auto metadata = io::parse_json(extra, what);
  TORCH_CHECK(metadata.is_object(), what, " should be a JSON object, got ", metadata.type_name());
  for (const auto& [block, layer] : model->moe_layers()) {
    detail::check_not_spread(layer, "blocks." + std::to_string(block) + ".moe",
                             "save_vision_transformer");
  }
  metadata["model"] = nlohmann::json::parse(model->config_json());
  auto holder = model;  // save_checkpoint reads the module through a non-const reference
  save_checkpoint(path, *holder, metadata.dump(), optimizer);
}

std::string read_vision_transformer_config(const std::string& path) {
  const auto text = read_checkpoint_metadata(path);
  const auto j = io::parse_json(text, "checkpoint " + path + ": metadata");
  TORCH_CHECK(j.is_object() && j.contains("model"), "checkpoint ", path,
              ": metadata lacks the model options");
  return j.at("model").dump();
}

VisionTransformer load_vision_transformer(const std::string& path) {
  auto model = vision_transformer_from_config(read_vision_transformer_config(path));
  load_checkpoint(path, *model);
  return model;
}

}  // namespace moeprune
