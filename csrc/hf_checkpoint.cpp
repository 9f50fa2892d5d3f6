#include <moeprune/hf_checkpoint.h>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace moeprune::hf {
namespace {

[[noreturn]] void fail(const std::string& message) {
  throw std::runtime_error(message);
}

nlohmann::json read_config(const std::string& directory) {
  const auto path = (std::filesystem::path(directory) / "config.json").string();
  std::ifstream in(path);
  if (!in) {
    fail(path + ": cannot open (a Hugging Face checkpoint folder needs config.json)");
  }
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    fail(path + ": not valid JSON: " + e.what());
  }
}

int64_t config_int(const nlohmann::json& config, const std::string& key, const std::string& path,
                   int64_t fallback = -1) {
  if (!config.contains(key)) {
    if (fallback >= 0) {
      return fallback;
    }
    fail(path + ": config.json has no \"" + key + "\"");
  }
  if (!config[key].is_number_integer() || config[key].get<int64_t>() < 0) {
    fail(path + ": config.json \"" + key + "\" is " + config[key].dump() +
         ", not a non-negative integer");
  }
  return config[key].get<int64_t>();
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return text + "]";
}

void expect_shape(const safetensors::Checkpoint& checkpoint, const std::string& name,
                  const std::vector<int64_t>& shape) {
  if (!checkpoint.contains(name)) {
    fail(checkpoint.directory() + ": tensor '" + name + "' is missing");
  }
  const auto& found = checkpoint.info(name).shape;
  if (found != shape) {
    fail(checkpoint.directory() + ": tensor '" + name + "' has shape " + shape_text(found) +
         ", config.json implies " + shape_text(shape));
  }
}

ExpertActivation activation_of(const std::string& name, const std::string& path) {
  if (name == "silu" || name == "swish") {
    return ExpertActivation::kSilu;
  }
  if (name == "relu") {
    return ExpertActivation::kRelu;
  }
  if (name == "gelu") {
    return ExpertActivation::kGelu;
  }
  if (name == "gelu_new" || name == "gelu_pytorch_tanh") {
    return ExpertActivation::kGeluTanh;
  }
  fail(path + ": activation \"" + name + "\" is not supported (silu, relu, gelu, gelu_new)");
}

// Experts listed in config.json's "moeprune" section as zeroed ("keep" checkpoints).
std::map<std::string, std::vector<int64_t>> zeroed_experts(const nlohmann::json& config) {
  std::map<std::string, std::vector<int64_t>> zeroed;
  if (config.contains("moeprune") && config["moeprune"].value("router", "") == "keep" &&
      config["moeprune"].contains("pruned_experts")) {
    for (const auto& [prefix, ids] : config["moeprune"]["pruned_experts"].items()) {
      zeroed[prefix] = ids.get<std::vector<int64_t>>();
    }
  }
  return zeroed;
}

}  // namespace

std::vector<std::string> MoELayerRef::expert_tensors(int64_t j) const {
  if (fused) {
    return {prefix + ".experts.gate_up_proj", prefix + ".experts.down_proj"};
  }
  const auto e = std::to_string(j);
  if (architecture == Architecture::kSwitchTransformers) {
    return {prefix + ".experts.expert_" + e + ".wi.weight",
            prefix + ".experts.expert_" + e + ".wo.weight"};
  }
  return {prefix + ".experts." + e + ".w1.weight", prefix + ".experts." + e + ".w2.weight",
          prefix + ".experts." + e + ".w3.weight"};
}

std::string ModelInfo::experts_key() const {
  return architecture == Architecture::kMixtral ? "num_local_experts" : "num_experts";
}

const MoELayerRef& ModelInfo::layer(const std::string& prefix) const {
  std::string known;
  for (const auto& l : layers) {
    if (l.prefix == prefix || std::to_string(l.index) == prefix) {
      return l;
    }
    known += (known.empty() ? "" : ", ") + l.prefix;
  }
  fail("no MoE layer '" + prefix + "' (layers: " + known + ")");
}

ModelInfo describe(const std::string& directory, const safetensors::Checkpoint& checkpoint) {
  const auto config = read_config(directory);
  const auto path = (std::filesystem::path(directory) / "config.json").string();
  ModelInfo info;
  info.model_type = config.value("model_type", "");
  const auto zeroed = zeroed_experts(config);
  auto add_layer = [&](MoELayerRef ref) {
    ref.index = static_cast<int64_t>(info.layers.size());
    ref.architecture = info.architecture;
    if (const auto it = zeroed.find(ref.prefix); it != zeroed.end()) {
      ref.zeroed_experts = it->second;
    }
    info.layers.push_back(std::move(ref));
  };

  if (info.model_type == "mixtral") {
    info.architecture = Architecture::kMixtral;
    info.d_model = config_int(config, "hidden_size", path);
    info.hidden_dim = config_int(config, "intermediate_size", path);
    info.num_experts = config_int(config, "num_local_experts", path);
    info.top_k = config_int(config, "num_experts_per_tok", path);
    info.router_jitter = config.value("router_jitter_noise", 0.0);
    info.activation = activation_of(config.value("hidden_act", "silu"), path);
    const int64_t layers = config_int(config, "num_hidden_layers", path);
    const int64_t E = info.num_experts, d = info.d_model, F = info.hidden_dim;
    for (int64_t i = 0; i < layers; ++i) {
      const auto base = "model.layers." + std::to_string(i);
      MoELayerRef ref;
      ref.num_experts = E;
      if (checkpoint.contains(base + ".block_sparse_moe.gate.weight")) {
        ref.prefix = base + ".block_sparse_moe";
        ref.router = ref.prefix + ".gate.weight";
      } else if (checkpoint.contains(base + ".mlp.gate.weight")) {
        ref.prefix = base + ".mlp";
        ref.router = ref.prefix + ".gate.weight";
        ref.fused = true;
      } else {
        fail(checkpoint.directory() + ": layer " + std::to_string(i) + " has no router (neither '" +
             base + ".block_sparse_moe.gate.weight' nor '" + base + ".mlp.gate.weight')");
      }
      expect_shape(checkpoint, ref.router, {E, d});
      if (ref.fused) {
        expect_shape(checkpoint, ref.prefix + ".experts.gate_up_proj", {E, 2 * F, d});
        expect_shape(checkpoint, ref.prefix + ".experts.down_proj", {E, d, F});
      } else {
        for (int64_t j = 0; j < E; ++j) {
          const auto names = ref.expert_tensors(j);
          expect_shape(checkpoint, names[0], {F, d});
          expect_shape(checkpoint, names[1], {d, F});
          expect_shape(checkpoint, names[2], {F, d});
        }
      }
      add_layer(std::move(ref));
    }
  } else if (info.model_type == "switch_transformers") {
    info.architecture = Architecture::kSwitchTransformers;
    info.d_model = config_int(config, "d_model", path);
    info.hidden_dim = config_int(config, "d_ff", path);
    info.num_experts = config_int(config, "num_experts", path);
    info.top_k = 1;
    info.expert_capacity = config_int(config, "expert_capacity", path);
    info.router_jitter = config.value("router_jitter_noise", 0.0);
    info.activation = activation_of(config.value("dense_act_fn", "relu"), path);
    if (config.value("router_bias", false)) {
      fail(path + ": router_bias is true; moeprune's routers have no bias");
    }
    if (config.value("is_gated_act", false)) {
      fail(path + ": is_gated_act is true; gated Switch experts are not supported");
    }
    const int64_t E = info.num_experts, d = info.d_model, F = info.hidden_dim;
    const struct {
      const char* stack;
      const char* layers_key;
      const char* step_key;
      int sublayer;
    } stacks[] = {{"encoder", "num_layers", "encoder_sparse_step", 1},
                  {"decoder", "num_decoder_layers", "decoder_sparse_step", 2}};
    for (const auto& s : stacks) {
      const int64_t layers = config_int(
          config, s.layers_key, path,
          std::string(s.stack) == "decoder" ? config_int(config, "num_layers", path) : -1);
      const int64_t step = config_int(config, s.step_key, path);
      for (int64_t i = 0; i < layers; ++i) {
        // transformers: block i is sparse when i % step == 1 (every block when step == 1).
        const bool sparse = step > 0 && (step == 1 || i % step == 1);
        if (!sparse) {
          continue;
        }
        MoELayerRef ref;
        ref.architecture = Architecture::kSwitchTransformers;
        ref.num_experts = E;
        ref.prefix = std::string(s.stack) + ".block." + std::to_string(i) + ".layer." +
                     std::to_string(s.sublayer) + ".mlp";
        ref.router = ref.prefix + ".router.classifier.weight";
        expect_shape(checkpoint, ref.router, {E, d});
        for (int64_t j = 0; j < E; ++j) {
          const auto names = ref.expert_tensors(j);
          expect_shape(checkpoint, names[0], {F, d});
          expect_shape(checkpoint, names[1], {d, F});
        }
        add_layer(std::move(ref));
      }
    }
  } else {
    fail(path + ": model_type \"" + info.model_type +
         "\" is not supported (mixtral, switch_transformers)");
  }
  if (info.layers.empty()) {
    fail(path + ": the model has no MoE layers");
  }
  for (const auto& [prefix, ids] : zeroed) {
    const auto& ref = info.layer(prefix);
    for (auto id : ids) {
      if (id < 0 || id >= ref.num_experts) {
        fail(path + ": moeprune.pruned_experts of " + prefix + " names expert " +
             std::to_string(id) + " of " + std::to_string(ref.num_experts));
      }
    }
  }
  return info;
}

MoELayer load_moe_layer(const safetensors::Checkpoint& checkpoint, const ModelInfo& info,
                        const MoELayerRef& ref, const LoadOptions& options) {
  const bool mixtral = info.architecture == Architecture::kMixtral;
  const int64_t hidden = options.expert_weights() ? info.hidden_dim : 1;
  auto o = MoELayerOptions::preset(mixtral ? "mixtral" : "switch", info.d_model, hidden,
                                   ref.num_experts);
  o.routing().k(info.top_k);
  if (!mixtral) {
    o.routing().expert_capacity(info.expert_capacity);
  }
  o.jitter(info.router_jitter).activation(info.activation);
  MoELayer layer(o);
  const auto dtype = options.dtype();
  layer->to(dtype);
  torch::NoGradGuard no_grad;
  layer->router().router_weight().copy_(checkpoint.tensor(ref.router).to(dtype));
  auto& bank = layer->experts();
  if (!options.expert_weights()) {
    // A placeholder bank of width 1, zeroed: the layer routes (for router-only criteria) and its
    // expert output is zero rather than random.
    for (auto& p : bank->parameters()) {
      p.zero_();
    }
    return layer;
  }
  const int64_t E = ref.num_experts;
  if (ref.fused) {
    const auto names = ref.expert_tensors(0);
    const auto gate_up = checkpoint.tensor(names[0]).to(dtype);  // [E, 2F, d], gate first
    const auto down = checkpoint.tensor(names[1]).to(dtype);     // [E, d, F]
    const int64_t F = info.hidden_dim;
    bank->w1.copy_(gate_up.narrow(1, 0, F).transpose(1, 2));
    bank->w3.copy_(gate_up.narrow(1, F, F).transpose(1, 2));
    bank->w2.copy_(down.transpose(1, 2));
  } else {
    for (int64_t j = 0; j < E; ++j) {
      const auto names = ref.expert_tensors(j);
      // HF stores nn.Linear weights [out, in]; the bank multiplies x [*, in] by [in, out].
      bank->w1[j].copy_(checkpoint.tensor(names[0]).to(dtype).t());
      bank->w2[j].copy_(checkpoint.tensor(names[1]).to(dtype).t());
      if (mixtral) {
        bank->w3[j].copy_(checkpoint.tensor(names[2]).to(dtype).t());
      }
    }
  }
  if (!ref.zeroed_experts.empty()) {
    std::vector<int64_t> kept;
    for (int64_t j = 0; j < E; ++j) {
      if (std::find(ref.zeroed_experts.begin(), ref.zeroed_experts.end(), j) ==
          ref.zeroed_experts.end()) {
        kept.push_back(j);
      }
    }
    layer->keep_experts(kept, /*drop_router_columns=*/false);
  }
  return layer;
}

MoEModel load_moe_model(const std::string& directory, const LoadOptions& options) {
  safetensors::Checkpoint checkpoint(directory);
  MoEModel model;
  model.info = describe(directory, checkpoint);
  for (const auto& ref : model.info.layers) {
    model.layers.emplace(ref.index, load_moe_layer(checkpoint, model.info, ref, options));
  }
  return model;
}

}  // namespace moeprune::hf
