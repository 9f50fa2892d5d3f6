#include <moeprune/layers/moe_view.h>

#include <torch/torch.h>

#include <set>

namespace moeprune {

std::map<int64_t, MoELayerEntry> MoEView::layer_map() const {
  std::map<int64_t, MoELayerEntry> out;
  for (auto& entry : layers()) {
    const auto key = entry.key;
    TORCH_CHECK(out.emplace(key, std::move(entry)).second, "MoE view: two layers share the key ",
                key);
  }
  return out;
}

void MoEView::walk_layers(const std::vector<int64_t>& keys, bool with_inputs,
                          const LayerVisitor& visit) const {
  std::set<int64_t> wanted;
  for (const auto& entry : select_layers(layers(), keys)) {
    wanted.insert(entry.key);
  }
  walk(with_inputs, [&](const MoELayerEntry& entry, const LayerCalls& calls) {
    if (wanted.count(entry.key) > 0) {
      visit(entry, calls);
    }
  });
}

std::vector<MoELayerEntry> select_layers(const std::vector<MoELayerEntry>& layers,
                                         const std::vector<int64_t>& keys) {
  std::set<int64_t> wanted;
  for (const auto key : keys) {
    TORCH_CHECK(wanted.insert(key).second, "MoE view: layer ", key, " is asked for twice");
  }
  std::vector<MoELayerEntry> out;
  for (const auto& entry : layers) {
    if (wanted.erase(entry.key) > 0) {
      out.push_back(entry);
    }
  }
  TORCH_CHECK(wanted.empty(), "MoE view: the model has no MoE layer keyed ", *wanted.begin());
  return out;
}

MoECapture::MoECapture(const std::vector<MoELayerEntry>& layers, bool with_inputs)
    : layers_(layers) {
  for (const auto& entry : layers_) {
    TORCH_CHECK(calls_.count(entry.key) == 0, "MoECapture: two layers share the key ", entry.key);
    MoELayer layer = entry.layer;
    layer->set_capture(&calls_[entry.key], with_inputs);
  }
}

MoECapture::~MoECapture() {
  for (const auto& entry : layers_) {
    MoELayer layer = entry.layer;
    layer->set_capture(nullptr, false);
  }
}

const LayerCalls& MoECapture::calls(int64_t key) const {
  const auto it = calls_.find(key);
  TORCH_CHECK(it != calls_.end(), "MoECapture: layer ", key, " is not captured");
  return it->second;
}

namespace {

// Puts a module back in training mode however the walk ends.
class EvalScope {
 public:
  explicit EvalScope(torch::nn::Module& m) : module_(m), was_training_(m.is_training()) {
    module_.eval();
  }
  ~EvalScope() {
    if (was_training_) {
      module_.train();
    }
  }
  EvalScope(const EvalScope&) = delete;
  EvalScope& operator=(const EvalScope&) = delete;

 private:
  torch::nn::Module& module_;
  bool was_training_;
};

}  // namespace

void walk_by_capture(torch::nn::Module& model, const std::vector<MoELayerEntry>& layers,
                     bool with_inputs, const std::function<void()>& run_forward_passes,
                     const LayerVisitor& visit) {
  MoECapture capture(layers, with_inputs);
  {
    torch::NoGradGuard no_grad;
    EvalScope eval(model);
    run_forward_passes();
  }
  for (const auto& entry : layers) {
    visit(entry, capture.calls(entry.key));
  }
}

LayerMapView::LayerMapView(std::vector<MoELayerEntry> layers, LayerTokens tokens,
                           std::string signature)
    : layers_(std::move(layers)), tokens_(std::move(tokens)), signature_(std::move(signature)) {
  for (const auto& entry : layers_) {
    TORCH_CHECK(!entry.layer.is_empty(), "LayerMapView: MoE layer ", entry.key, " (", entry.name,
                ") is empty");
  }
  layer_map();  // refuses repeated keys
}

std::shared_ptr<LayerMapView> LayerMapView::of(const std::map<int64_t, MoELayer>& layers,
                                               LayerTokens tokens) {
  std::vector<MoELayerEntry> entries;
  for (const auto& [key, layer] : layers) {
    entries.push_back({key, "layer " + std::to_string(key), layer});
  }
  return std::make_shared<LayerMapView>(std::move(entries), std::move(tokens));
}

void LayerMapView::walk(bool with_inputs, const LayerVisitor& visit) const {
  TORCH_CHECK(has_calibration(), "MoE layers: no calibration tokens to walk");
  const auto by_key = layer_map();
  std::map<int64_t, LayerCalls> calls;
  {
    torch::NoGradGuard no_grad;
    tokens_([&](int64_t key, const torch::Tensor& tokens) {
      const auto it = by_key.find(key);
      TORCH_CHECK(it != by_key.end(), "calibration tokens for MoE layer ", key,
                  ", which the model does not have");
      MoELayer layer = it->second.layer;
      TORCH_CHECK(tokens.dim() >= 1 && tokens.size(-1) == layer->options.d_model(),
                  "calibration tokens for MoE layer ", key, " (", it->second.name, ") have width ",
                  tokens.dim() >= 1 ? tokens.size(-1) : 0, ", the layer's is ",
                  layer->options.d_model());
      const bool was_training = layer->is_training();
      layer->eval();
      const auto x = tokens.reshape({-1, tokens.size(-1)});
      auto plan = layer->route(x).plan;
      if (was_training) {
        layer->train();
      }
      calls[key].push_back({with_inputs ? x : torch::Tensor(), std::move(plan)});
    });
  }
  static const LayerCalls kNone;
  for (const auto& entry : layers_) {
    const auto it = calls.find(entry.key);
    visit(entry, it == calls.end() ? kNone : it->second);
  }
}

}  // namespace moeprune
