#include <moeprune/hf/checkpoint.h>

#include "hf/compressed_tensors_quantized.h"
#include "hf/compressed_tensors_sparse.h"
#include "hf/config.h"
#include "hf/default_dtype.h"
#include "hf/describe.h"
#include "hf/family.h"
#include "hf/fp8_blocks.h"
#include "hf/gptq_layout.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>

namespace moeprune::hf {
namespace {

// The layer states of a moeprune "keep" checkpoint (config.json's "moeprune" section): experts
// removed with the router rows kept, their weights written as zeros. "layer_states" holds
// MoELayerState JSON by layer prefix; checkpoints written before it list "pruned_experts".
std::map<std::string, MoELayerState> pruned_states(const Config& config,
                                                   const std::vector<MoELayerRef>& refs) {
  std::map<std::string, MoELayerState> states;
  if (!config.contains("moeprune")) {
    return states;
  }
  const auto& section = config.json().at("moeprune");
  TORCH_CHECK(section.is_object(), config.path(), ": \"moeprune\" should be an object");
  if (section.value("router", "") != "keep") {
    return states;  // a cut checkpoint is a plain, smaller model
  }
  const auto num_experts_of = [&](const std::string& prefix) {
    for (const auto& ref : refs) {
      if (ref.prefix == prefix) {
        return ref.num_experts;
      }
    }
    TORCH_CHECK(false, config.path(), ": the moeprune section names MoE layer '", prefix,
                "', which the checkpoint does not have");
  };
  try {
    if (section.contains("layer_states")) {
      for (const auto& [prefix, state] : section.at("layer_states").items()) {
        auto s = MoELayerState::from_json(state.dump());
        TORCH_CHECK(s.bank.num_experts == num_experts_of(prefix), config.path(),
                    ": the moeprune state of ", prefix, " is of ", s.bank.num_experts,
                    " experts, the layer has ", num_experts_of(prefix));
        states[prefix] = std::move(s);
      }
    } else if (section.contains("pruned_experts")) {
      for (const auto& [prefix, ids] : section.at("pruned_experts").items()) {
        const int64_t E = num_experts_of(prefix);
        auto gone = ids.get<std::vector<int64_t>>();
        MoELayerState s;
        s.bank.num_experts = E;
        for (const auto id : gone) {
          TORCH_CHECK(id >= 0 && id < E, config.path(), ": moeprune.pruned_experts of ", prefix,
                      " names expert ", id, " of ", E);
        }
        for (int64_t j = 0; j < E; ++j) {
          if (std::find(gone.begin(), gone.end(), j) == gone.end()) {
            s.bank.held.push_back(j);
          }
        }
        states[prefix] = std::move(s);
      }
    }
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, config.path(), ": the moeprune section has a field of the wrong type (",
                e.what(), ")");
  }
  return states;
}

}  // namespace

std::vector<int64_t> MoELayerRef::removed_experts() const {
  std::vector<int64_t> removed;
  if (state.bank.num_experts == 0) {
    return removed;
  }
  for (int64_t j = 0; j < state.bank.num_experts; ++j) {
    if (!std::binary_search(state.bank.held.begin(), state.bank.held.end(), j)) {
      removed.push_back(j);
    }
  }
  return removed;
}

std::vector<std::string> MoELayerRef::expert_tensors(int64_t j) const {
  return family_of(model_type).expert_tensors(*this, j);
}

std::string ModelInfo::experts_key() const {
  return config_experts_key.empty() ? family_of(model_type).experts_key() : config_experts_key;
}

const MoELayerRef& ModelInfo::layer(const std::string& prefix) const {
  std::string known;
  for (const auto& l : layers) {
    if (l.prefix == prefix || std::to_string(l.index) == prefix) {
      return l;
    }
    known += (known.empty() ? "" : ", ") + l.prefix;
  }
  TORCH_CHECK(false, "no MoE layer '", prefix, "' (layers: ", known, ")");
}

namespace {

// describe() once config.json is read.
ModelInfo describe_config(const Config& config, const safetensors::Checkpoint& checkpoint) {
  ModelInfo info;
  info.model_type = config.text("model_type", "");
  // compressed-tensors' sparse and pack-quantized formats, block-scaled FP8 and the GPTQ layout
  // are read when hf::Source has added their weights as decoded tensors; every other
  // quantisation (AWQ's layout, bitsandbytes...) is refused.
  const bool decoded =
      (!detail::compressed_tensors_sparse_format(config).empty() ||
       !detail::pack_quantized_groups(config).empty() ||
       detail::fp8_block_size(config).has_value() || detail::gptq_layout(config).has_value()) &&
      checkpoint.decoded_count() > 0;
  if (config.is_set("quantization_config") && !decoded) {
    // Quantised or compressed weights (GPTQ, AWQ, FP8, compressed-tensors' sparse formats)
    // are not the dense tensors the families read: say what the file is rather than name a
    // tensor as missing.
    const auto& q = config.json().at("quantization_config");
    std::string what = q.is_object() ? q.value("quant_method", std::string("unknown")) : "unknown";
    if (q.is_object() && q.contains("sparsity_config") && q["sparsity_config"].is_object()) {
      what += ", sparsity format " + q["sparsity_config"].value("format", std::string("?"));
    }
    if (q.is_object() && q.contains("format") && q["format"].is_string()) {
      what += ", format " + q["format"].get<std::string>();
    }
    TORCH_CHECK(
        false, config.path(), ": the checkpoint is stored quantised or compressed (",
        "quantization_config: ", what,
        "); moeprune reads dense checkpoints, compressed-tensors' pack-quantized and sparse "
        "formats, block-scaled FP8 and the GPTQ layout: decompress it first (load it in "
        "transformers and save_pretrained without compression)");
  }
  const auto& family = family_of(info.model_type, config.path());
  auto refs = family.describe(config, checkpoint, info);
  TORCH_CHECK(!refs.empty(), config.path(), ": the model has no MoE layers");
  // The router modules check k too, but name only k and E; here the file and its keys.
  const auto experts_key = info.experts_key();
  TORCH_CHECK(info.top_k >= 1 && info.top_k <= info.num_experts, config.path(),
              ": num_experts_per_tok = ", info.top_k, " should be in [1, ", experts_key, " = ",
              info.num_experts, "]");
  if (info.group_routing) {
    const auto& g = *info.group_routing;
    const int64_t per_group = info.num_experts / g.num_groups();
    TORCH_CHECK(info.top_k <= g.groups_kept() * per_group, config.path(),
                ": num_experts_per_tok = ", info.top_k,
                " experts do not fit in topk_group = ", g.groups_kept(), " groups of ", per_group,
                " (", experts_key, " = ", info.num_experts, " in n_group = ", g.num_groups(),
                " groups)");
  }
  const auto states = pruned_states(config, refs);
  for (auto& ref : refs) {
    ref.index = static_cast<int64_t>(info.layers.size());
    ref.model_type = info.model_type;
    const auto it = states.find(ref.prefix);
    if (it != states.end()) {
      ref.state = it->second;
    }
    info.layers.push_back(std::move(ref));
  }
  return info;
}

}  // namespace

ModelInfo detail::describe(const Config& config, const safetensors::Checkpoint& checkpoint) {
  return read_checked(config, [&] { return describe_config(config, checkpoint); });
}

ModelInfo describe(const std::string& directory, const safetensors::Checkpoint& checkpoint) {
  return detail::describe(Config(directory), checkpoint);
}

MoELayerOptions moe_layer_options(const ModelInfo& info, const MoELayerRef& ref) {
  return family_of(info.model_type).layer_options(info, ref, info.hidden_dim);
}

MoELayer load_moe_layer(const safetensors::Checkpoint& checkpoint, const ModelInfo& info,
                        const MoELayerRef& ref, const LoadOptions& options) {
  const auto& family = family_of(info.model_type);
  MoELayer layer{nullptr};
  {
    // Built in the target dtype (not fp32 first) and one unit wide: the experts' tensors are
    // allocated at full width below without a random initialisation the checkpoint overwrites.
    detail::DefaultDtype guard(options.dtype());
    layer = MoELayer(family.layer_options(info, ref, 1));
  }
  layer->to(options.dtype());
  torch::NoGradGuard no_grad;
  layer->router().router_weight().copy_(checkpoint.tensor(ref.router).to(options.dtype()));
  if (!ref.router_bias.empty()) {
    auto bias = layer->router().router_bias();
    TORCH_CHECK(bias.defined(), ref.prefix, " has a router bias but its layer's router takes none");
    // The bias stays fp32, as transformers keeps it (a registered fp32 buffer): layer->to()
    // above made it `options.dtype()`, and copying into that would round it. Rounded to bf16 it
    // moves the choice scores by up to 2^-9 of itself, more than the margin of some tokens' group
    // or expert choice, which then differs from transformers' (lm_bf16_layers, glm4_moe).
    bias.set_data(checkpoint.tensor(ref.router_bias).to(torch::kFloat).clone());
  }
  auto& bank = layer->experts();
  if (!options.expert_weights()) {
    // A placeholder bank of width 1, zeroed: the layer routes (for router-only criteria) and its
    // expert output is zero rather than random.
    for (auto& p : bank->parameters()) {
      p.zero_();
    }
    return layer;
  }
  const int64_t E = ref.num_experts, d = info.d_model, F = info.hidden_dim;
  const auto empty = [&](std::vector<int64_t> shape) {
    return torch::empty(shape, bank->w1.options());
  };
  bank->w1.set_data(empty({E, d, F}));
  bank->w2.set_data(empty({E, F, d}));
  if (bank->w3.defined()) {
    bank->w3.set_data(empty({E, d, F}));
  }
  if (bank->b1.defined()) {  // no family has expert biases; zero rather than garbage if one does
    bank->b1.set_data(torch::zeros({E, F}, bank->w1.options()));
    bank->b2.set_data(torch::zeros({E, d}, bank->w1.options()));
  }
  bank->options.hidden_dim(F);
  layer->options.hidden_dim(F);
  family.load_experts(checkpoint, info, ref, bank);
  // The experts now live in the bank's layout: let the kernel drop the mapped source pages, so a
  // loaded model is not held twice (once copied, once mapped).
  for (int64_t j = 0; j < (ref.fused ? 1 : ref.num_experts); ++j) {
    for (const auto& name : family.expert_tensors(ref, j)) {
      checkpoint.release(name);
    }
  }
  if (!ref.state.is_plain()) {
    layer->restore(ref.state);  // a "keep" checkpoint's zeroed experts are freed
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
