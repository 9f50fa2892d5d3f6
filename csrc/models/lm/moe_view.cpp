#include <moeprune/models/lm/moe_view.h>

#include "models/lm/checkpoint_tensors.h"
#include "models/lm/families/family.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

namespace moeprune::lm {

CausalLMMoEView::CausalLMMoEView(CausalLM model, CalibrationData tokens)
    : model_(std::move(model)), tokens_(std::move(tokens)) {
  TORCH_CHECK(!model_.is_empty(), "CausalLMMoEView: no model");
}

std::vector<MoELayerEntry> CausalLMMoEView::layers() const {
  const auto block = family(model_->options.model_type()).moe_block();
  std::vector<MoELayerEntry> out;
  for (const auto& [index, layer] : model_->moe_layers()) {
    out.push_back({index, "model.layers." + std::to_string(index) + "." + block, layer});
  }
  return out;
}

void CausalLMMoEView::walk(bool with_inputs, const LayerVisitor& visit) const {
  std::vector<int64_t> keys;
  for (const auto& entry : layers()) {
    keys.push_back(entry.key);
  }
  walk_layers(keys, with_inputs, visit);
}

void CausalLMMoEView::walk_layers(const std::vector<int64_t>& keys, bool with_inputs,
                                  const LayerVisitor& visit) const {
  TORCH_CHECK(has_calibration(), "CausalLMMoEView: no calibration tokens to walk");
  auto model = model_;
  walk_by_capture(
      *model, select_layers(layers(), keys), with_inputs,
      [&] { tokens_([&](const torch::Tensor& batch) { model->hidden_states(batch); }); }, visit);
}

std::vector<LinearEntry> CausalLMMoEView::linears() const {
  std::vector<LinearEntry> out;
  for (size_t i = 0; i < model_->layers->size(); ++i) {
    auto layer = model_->layer(static_cast<int64_t>(i));
    auto own = detail::layer_linears(model_->options, *layer, layer->index);
    out.insert(out.end(), own.begin(), own.end());
  }
  return out;
}

std::string CausalLMMoEView::signature() const {
  const auto& o = model_->options;
  nlohmann::json j;
  j["model_type"] = o.model_type();
  j["vocab_size"] = o.vocab_size();
  j["hidden_size"] = o.hidden_size();
  j["num_layers"] = o.num_layers();
  j["moe_layers"] = o.moe_layers();
  if (!o.dropped_mlp_layers().empty()) {
    j["dropped_mlp_layers"] = o.dropped_mlp_layers();
  }
  if (o.moe().has_value()) {
    j["num_experts"] = o.moe()->num_experts();
    j["expert_width"] = o.moe()->hidden_dim();
    j["top_k"] = o.moe()->routing().k();
  }
  return j.dump();
}

std::shared_ptr<CausalLMMoEView> moe_view(const CausalLM& model, CalibrationData tokens) {
  return std::make_shared<CausalLMMoEView>(model, std::move(tokens));
}

}  // namespace moeprune::lm
