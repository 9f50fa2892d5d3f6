#include "models/lm/checkpoint_tensors.h"

#include <c10/util/StringUtil.h>
#include <torch/torch.h>

#include "models/lm/families/family.h"
#include "models/lm/hf_architecture.h"

namespace moeprune::lm::detail {
namespace {

void add_linear(std::vector<std::pair<std::string, torch::Tensor>>& out, const std::string& name,
                const torch::nn::Linear& linear) {
  out.emplace_back(name + ".weight", linear->weight);
  if (linear->bias.defined()) {
    out.emplace_back(name + ".bias", linear->bias);
  }
}

void add_gated_mlp(std::vector<std::pair<std::string, torch::Tensor>>& out, const std::string& name,
                   const GatedMLP& mlp) {
  add_linear(out, name + ".gate_proj", mlp->gate_proj);
  add_linear(out, name + ".up_proj", mlp->up_proj);
  add_linear(out, name + ".down_proj", mlp->down_proj);
}

// The projections an attention holds (grouped-query or latent), by Hugging Face name; the ones
// it does not use are empty.
std::vector<std::pair<const char*, const torch::nn::Linear*>> attention_projections(
    const Attention& attn) {
  return {{"q_proj", &attn->q_proj},       {"q_a_proj", &attn->q_a_proj},
          {"q_b_proj", &attn->q_b_proj},   {"kv_a_proj_with_mqa", &attn->kv_a_proj_with_mqa},
          {"kv_b_proj", &attn->kv_b_proj}, {"k_proj", &attn->k_proj},
          {"v_proj", &attn->v_proj},       {"o_proj", &attn->o_proj}};
}

}  // namespace

std::string layer_prefix(int64_t i) {
  return "model.layers." + std::to_string(i) + ".";
}

void add_layer_tensors(NamedTensors& out, const CausalLMOptions& o, DecoderLayerImpl& layer) {
  const auto& f = family(o.model_type());
  const auto p = layer_prefix(layer.index);
  out.emplace_back(p + "input_layernorm.weight", layer.input_layernorm->weight);
  // The projections the attention holds (grouped-query or latent), in Hugging Face's names.
  const auto& attn = layer.self_attn;
  const auto a = p + "self_attn.";
  for (const auto& [name, linear] : attention_projections(attn)) {
    if (!linear->is_empty()) {
      add_linear(out, a + name, *linear);
    }
  }
  for (const auto& [name, norm] : {std::pair<const char*, const RMSNorm*>{"q_norm", &attn->q_norm},
                                   {"k_norm", &attn->k_norm},
                                   {"q_a_layernorm", &attn->q_a_layernorm},
                                   {"kv_a_layernorm", &attn->kv_a_layernorm}}) {
    if (!norm->is_empty()) {
      out.emplace_back(a + name + ".weight", (*norm)->weight);
    }
  }
  if (!layer.has_mlp()) {
    // Layer Drop: the MoE block is written as one that adds nothing (zero experts, written by
    // save_causal_lm), so transformers computes the same; these tensors are its dense part.
    const auto opts = layer.input_layernorm->weight.options();
    const int64_t d = o.hidden_size(), width = o.shared_expert_size();
    out.emplace_back(p + "post_attention_layernorm.weight", torch::ones({d}, opts));
    if (width > 0) {
      const auto shared = p + f.moe_block() + "." + f.shared_expert();
      out.emplace_back(shared + ".gate_proj.weight", torch::zeros({width, d}, opts));
      out.emplace_back(shared + ".up_proj.weight", torch::zeros({width, d}, opts));
      out.emplace_back(shared + ".down_proj.weight", torch::zeros({d, width}, opts));
    }
    if (o.shared_expert_gate()) {
      out.emplace_back(p + f.moe_block() + ".shared_expert_gate.weight",
                       torch::zeros({1, d}, opts));
    }
    return;
  }
  out.emplace_back(p + "post_attention_layernorm.weight", layer.post_attention_layernorm->weight);
  if (!layer.is_moe()) {
    add_gated_mlp(out, p + "mlp", layer.mlp);
    return;
  }
  const auto& block = layer.moe_block;
  if (!block->shared_expert.is_empty()) {
    add_gated_mlp(out, p + f.moe_block() + "." + f.shared_expert(), block->shared_expert);
  }
  if (!block->shared_expert_gate.is_empty()) {
    add_linear(out, p + f.moe_block() + ".shared_expert_gate", block->shared_expert_gate);
  }
}

std::vector<LinearEntry> layer_linears(const CausalLMOptions& o, DecoderLayerImpl& layer,
                                       int64_t block) {
  const auto& f = family(o.model_type());
  const auto p = layer_prefix(layer.index);
  std::vector<LinearEntry> out;
  const auto add = [&](const std::string& name, LinearRole role, const torch::nn::Linear& linear) {
    if (!linear.is_empty()) out.push_back({block, name, role, linear});
  };
  const auto& attn = layer.self_attn;
  for (const auto& [name, linear] : attention_projections(attn)) {
    add(p + "self_attn." + name, LinearRole::kAttention, *linear);
  }
  const auto add_mlp = [&](const std::string& name, LinearRole role, const GatedMLP& mlp) {
    add(name + ".gate_proj", role, mlp->gate_proj);
    add(name + ".up_proj", role, mlp->up_proj);
    add(name + ".down_proj", role, mlp->down_proj);
  };
  if (!layer.mlp.is_empty()) {
    add_mlp(p + "mlp", LinearRole::kDenseMLP, layer.mlp);
  }
  if (!layer.moe_block.is_empty() && !layer.moe_block->shared_expert.is_empty()) {
    add_mlp(p + f.moe_block() + "." + f.shared_expert(), LinearRole::kSharedExpert,
            layer.moe_block->shared_expert);
  }
  return out;
}

std::vector<int64_t> recorded_layer_drop(const hf::Config& config, const CausalLMOptions& o) {
  if (!config.contains("moeprune")) {
    return {};
  }
  const auto& section = config.json().at("moeprune");
  if (!section.is_object() || !section.contains("dropped_mlp_layers")) {
    return {};
  }
  const auto& list = section.at("dropped_mlp_layers");
  TORCH_CHECK(list.is_array(), config.path(),
              ": \"moeprune\".\"dropped_mlp_layers\" should be a list of layer indices");
  std::vector<int64_t> out;
  for (const auto& v : list) {
    TORCH_CHECK(v.is_number_integer(), config.path(),
                ": \"moeprune\".\"dropped_mlp_layers\" holds ", v.dump(), ", not a layer index");
    const auto i = v.get<int64_t>();
    TORCH_CHECK(i >= 0 && i < o.num_layers() && o.moe_layers()[static_cast<size_t>(i)] &&
                    (out.empty() || i > out.back()),
                config.path(), ": \"moeprune\".\"dropped_mlp_layers\" lists ", i,
                ", which is not a MoE layer of the ", o.num_layers(), " (increasing, each once)");
    out.push_back(i);
  }
  return out;
}

std::string shape_text(c10::IntArrayRef shape) {
  return "[" + c10::Join(", ", shape) + "]";
}

CausalLMOptions checkpoint_model_options(const hf::Config& config, const hf::ModelInfo& info) {
  auto o = options_from_config(config);
  auto moe_layers = o.moe_layers();
  for (const auto& ref : info.layers) {
    TORCH_CHECK(ref.decoder_layer >= 0 && ref.decoder_layer < o.num_layers(), config.path(),
                ": MoE layer ", ref.prefix, " is outside the ", o.num_layers(), " decoder layers");
    moe_layers[static_cast<size_t>(ref.decoder_layer)] = true;
  }
  o.moe_layers(moe_layers);
  auto moe_options = hf::moe_layer_options(info, info.layers.front());
  moe_options.aux_loss_weights(functional::AuxLossWeights().load_balance(aux_loss_coef(config)));
  o.moe(moe_options);
  return o;
}

void load_tensor_into(const safetensors::Checkpoint& checkpoint, const std::string& name,
                      torch::Tensor& param, const std::string& model_type) {
  const auto& directory = checkpoint.directory();
  TORCH_CHECK(checkpoint.contains(name), directory, ": tensor '", name, "' is missing (",
              model_type, " with this config.json has it)");
  const auto t = checkpoint.tensor(name);
  TORCH_CHECK(t.sizes() == param.sizes(), directory, ": tensor '", name, "' has shape ",
              shape_text(t.sizes()), ", config.json implies ", shape_text(param.sizes()));
  param.set_data(t.scalar_type() == param.scalar_type() ? t : t.to(param.scalar_type()));
}

}  // namespace moeprune::lm::detail
