#include <moeprune/models/vision/moe_view.h>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

namespace moeprune {

VisionTransformerMoEView::VisionTransformerMoEView(VisionTransformer model, CalibrationData images)
    : model_(std::move(model)), images_(std::move(images)) {
  TORCH_CHECK(!model_.is_empty(), "VisionTransformerMoEView: no model");
}

std::vector<MoELayerEntry> VisionTransformerMoEView::layers() const {
  std::vector<MoELayerEntry> out;
  for (const auto& [block, layer] : model_->moe_layers()) {
    out.push_back({block, "block" + std::to_string(block) + ".moe", layer});
  }
  return out;
}

std::vector<LinearEntry> VisionTransformerMoEView::linears() const {
  std::vector<LinearEntry> out;
  for (size_t i = 0; i < model_->blocks.size(); ++i) {
    const auto& block = model_->blocks[i];
    const auto key = static_cast<int64_t>(i);
    const auto name = "block" + std::to_string(i) + ".";
    const auto add = [&](const char* local, LinearRole role, const torch::nn::Linear& linear) {
      if (!linear.is_empty()) out.push_back({key, name + local, role, linear});
    };
    if (block->has_attention) {
      add("qkv", LinearRole::kAttention, block->qkv);
      add("proj", LinearRole::kAttention, block->proj);
    }
    if (block->has_mlp && !block->is_moe()) {
      add("fc1", LinearRole::kDenseMLP, block->fc1);
      add("fc2", LinearRole::kDenseMLP, block->fc2);
    }
  }
  return out;
}

void VisionTransformerMoEView::walk(bool with_inputs, const LayerVisitor& visit) const {
  std::vector<int64_t> keys;
  for (const auto& entry : layers()) {
    keys.push_back(entry.key);
  }
  walk_layers(keys, with_inputs, visit);
}

void VisionTransformerMoEView::walk_layers(const std::vector<int64_t>& keys, bool with_inputs,
                                           const LayerVisitor& visit) const {
  TORCH_CHECK(has_calibration(), "VisionTransformerMoEView: no calibration images to walk");
  auto model = model_;
  walk_by_capture(
      *model, select_layers(layers(), keys), with_inputs,
      [&] { images_([&](const torch::Tensor& batch) { model->forward(batch); }); }, visit);
}

std::string VisionTransformerMoEView::signature() const {
  auto j = nlohmann::json::parse(model_->options.to_json());
  for (const char* key : {"num_classes", "capacity_factor"}) {
    j.erase(key);
  }
  return j.dump();
}

std::shared_ptr<VisionTransformerMoEView> moe_view(const VisionTransformer& model,
                                                   CalibrationData images) {
  return std::make_shared<VisionTransformerMoEView>(model, std::move(images));
}

}  // namespace moeprune
