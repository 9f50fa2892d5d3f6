#include <moeprune/models/lm/causal_lm.h>

#include "layers/error_context.h"

#include <torch/torch.h>

#include <cstdint>

namespace moeprune::lm {

void CausalLMOptions::validate() const {
  TORCH_CHECK(vocab_size() >= 1 && hidden_size() >= 1 && num_layers() >= 1,
              "CausalLMOptions: vocab_size, hidden_size and num_layers should be >= 1, got ",
              vocab_size(), ", ", hidden_size(), ", ", num_layers());
  TORCH_CHECK(attention().hidden_size() == hidden_size(), "CausalLMOptions: attention width ",
              attention().hidden_size(), " differs from hidden_size ", hidden_size());
  TORCH_CHECK(static_cast<int64_t>(moe_layers().size()) == num_layers(),
              "CausalLMOptions: moe_layers has ", moe_layers().size(), " entries for ",
              num_layers(), " layers");
  bool any_moe = false, any_dense = false;
  for (const bool m : moe_layers()) {
    any_moe = any_moe || m;
    any_dense = any_dense || !m;
  }
  TORCH_CHECK(!any_moe || moe().has_value(), "CausalLMOptions: MoE layers need moe options");
  TORCH_CHECK(!any_moe || moe()->d_model() == hidden_size(), "CausalLMOptions: MoE width ",
              moe()->d_model(), " differs from hidden_size ", hidden_size());
  int64_t previous = -1;
  for (const int64_t i : dropped_mlp_layers()) {
    TORCH_CHECK(i > previous && i < num_layers(),
                "CausalLMOptions: dropped_mlp_layers should be increasing layer indices below ",
                num_layers(), ", found ", i, " after ", previous);
    TORCH_CHECK(moe_layers()[static_cast<size_t>(i)], "CausalLMOptions: dropped_mlp_layers lists ",
                i, ", a dense layer; Layer Drop removes MoE blocks only");
    previous = i;
  }
  TORCH_CHECK(!any_dense || intermediate_size() >= 1,
              "CausalLMOptions: dense layers need intermediate_size >= 1, got ",
              intermediate_size());
}

namespace {

// Recomputes one decoder layer in the backward pass (reentrant activation checkpointing, as
// torch.utils.checkpoint(use_reentrant=True)): the forward runs without a graph, the backward
// runs it again with one and back-propagates through it, accumulating the parameters'
// gradients.
struct CheckpointedLayer : public torch::autograd::Function<CheckpointedLayer> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const torch::Tensor& hidden,
                                                DecoderLayerImpl* layer,
                                                const RotaryAngles& angles) {
    ctx->saved_data["layer"] = reinterpret_cast<int64_t>(layer);
    ctx->saved_data["cos"] = angles.cos;
    ctx->saved_data["sin"] = angles.sin;
    ctx->save_for_backward({hidden});
    torch::NoGradGuard no_grad;
    auto out = layer->forward(hidden, angles);
    auto aux = out.aux_loss.defined() ? out.aux_loss
                                      : torch::zeros({}, hidden.options().dtype(torch::kFloat));
    return {out.hidden, aux};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* layer = reinterpret_cast<DecoderLayerImpl*>(ctx->saved_data["layer"].toInt());
    const RotaryAngles angles{ctx->saved_data["cos"].toTensor(), ctx->saved_data["sin"].toTensor()};
    auto hidden = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    torch::AutoGradMode enable(true);
    auto out = layer->forward(hidden, angles);
    std::vector<torch::Tensor> outputs{out.hidden}, output_grads{grads[0]};
    if (out.aux_loss.defined() && out.aux_loss.requires_grad() && grads[1].defined()) {
      outputs.push_back(out.aux_loss);
      output_grads.push_back(grads[1].to(out.aux_loss.scalar_type()));
    }
    torch::autograd::backward(outputs, output_grads);
    return {hidden.grad(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

CausalLMImpl::CausalLMImpl(CausalLMOptions options_) : options(std::move(options_)) {
  reset();
}

void CausalLMImpl::reset() {
  options.validate();
  embed_tokens = register_module("embed_tokens",
                                 torch::nn::Embedding(options.vocab_size(), options.hidden_size()));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < options.num_layers(); ++i) {
    layers->push_back(DecoderLayer(options, i));
  }
  norm = register_module(
      "norm", RMSNorm(RMSNormOptions(options.hidden_size()).eps(options.rms_norm_eps())));
  if (!options.tie_word_embeddings()) {
    lm_head = register_module(
        "lm_head",
        torch::nn::Linear(
            torch::nn::LinearOptions(options.hidden_size(), options.vocab_size()).bias(false)));
  }
}

void CausalLMImpl::pretty_print(std::ostream& stream) const {
  int64_t moe = 0;
  for (const bool m : options.moe_layers()) {
    moe += m ? 1 : 0;
  }
  const auto dropped = static_cast<int64_t>(options.dropped_mlp_layers().size());
  stream << "moeprune::lm::CausalLM(" << options.model_type() << ", layers=" << options.num_layers()
         << " (" << moe - dropped << " MoE";
  if (dropped > 0) {
    stream << ", " << dropped << " without MLP";
  }
  stream << "), hidden=" << options.hidden_size() << ", vocab=" << options.vocab_size() << ")";
}

DecoderLayer CausalLMImpl::layer(int64_t index) const {
  TORCH_CHECK(index >= 0 && index < options.num_layers(), "CausalLM: layer ", index,
              " is outside [0, ", options.num_layers(), ")");
  return layers->ptr<DecoderLayerImpl>(static_cast<size_t>(index));
}

std::vector<std::pair<int64_t, MoELayer>> CausalLMImpl::moe_layers() const {
  std::vector<std::pair<int64_t, MoELayer>> out;
  for (int64_t i = 0; i < options.num_layers(); ++i) {
    const auto l = layer(i);
    if (l->is_moe()) {
      out.emplace_back(i, l->moe_block->moe);
    }
  }
  return out;
}

void CausalLMImpl::set_gradient_checkpointing(bool enabled) {
  if (enabled) {
    for (const auto& [index, moe] : moe_layers()) {
      TORCH_CHECK(!adds_training_noise(moe->options.router()),
                  "CausalLM: gradient checkpointing needs deterministic routing; layer ", index,
                  " adds routing noise or jitter while training");
    }
  }
  gradient_checkpointing_ = enabled;
}

void CausalLMImpl::drop_mlp(int64_t index) {
  layer(index)->drop_mlp();
  options.dropped_mlp_layers(layer(index)->options.dropped_mlp_layers());
  for (int64_t i = 0; i < options.num_layers(); ++i) {
    layer(i)->options.dropped_mlp_layers(options.dropped_mlp_layers());
  }
}

void CausalLMImpl::remove_layers(const std::vector<int64_t>& indices) {
  std::vector<bool> gone(static_cast<size_t>(options.num_layers()), false);
  for (const int64_t i : indices) {
    layer(i);  // range check
    TORCH_CHECK(!gone[static_cast<size_t>(i)], "CausalLM::remove_layers: layer ", i,
                " is listed twice");
    gone[static_cast<size_t>(i)] = true;
  }
  const int64_t left = options.num_layers() - static_cast<int64_t>(indices.size());
  TORCH_CHECK(left >= 1, "CausalLM::remove_layers: cannot remove all ", options.num_layers(),
              " layers");
  std::vector<bool> moe;
  std::vector<int64_t> dropped_mlp;
  std::vector<DecoderLayer> kept;
  for (int64_t i = 0; i < options.num_layers(); ++i) {
    if (gone[static_cast<size_t>(i)]) {
      continue;
    }
    const auto l = layer(i);
    if (!l->has_mlp()) {
      dropped_mlp.push_back(static_cast<int64_t>(kept.size()));
    }
    moe.push_back(options.moe_layers()[static_cast<size_t>(i)]);
    kept.push_back(l);
  }
  auto o = options;
  o.num_layers(left).moe_layers(moe).dropped_mlp_layers(dropped_mlp);
  o.validate();
  auto list = torch::nn::ModuleList();
  for (size_t i = 0; i < kept.size(); ++i) {
    kept[i]->index = static_cast<int64_t>(i);
    kept[i]->options = o;
    list->push_back(kept[i]);
  }
  options = o;
  layers = replace_module("layers", list);
}

std::pair<torch::Tensor, torch::Tensor> CausalLMImpl::hidden_states(const torch::Tensor& input_ids,
                                                                    KVCache* cache,
                                                                    const LayerTrace& trace) {
  TORCH_CHECK(input_ids.dim() == 2, "CausalLM: input_ids should be [B, S], got ",
              input_ids.sizes());
  TORCH_CHECK(input_ids.scalar_type() == torch::kLong, "CausalLM: input_ids should be int64, got ",
              input_ids.scalar_type());
  TORCH_CHECK(input_ids.size(1) >= 1, "CausalLM: input_ids has no tokens");
  if (input_ids.is_cpu()) {  // on a GPU the check would wait for the device at every step
    const auto lo = input_ids.min().item<int64_t>(), hi = input_ids.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < options.vocab_size(), "CausalLM: token ids should be in [0, ",
                options.vocab_size(), "), found ", lo < 0 ? lo : hi);
  }
  TORCH_CHECK(cache == nullptr || cache->num_layers() == options.num_layers(),
              "CausalLM: the cache has ", cache == nullptr ? 0 : cache->num_layers(),
              " layers, the model ", options.num_layers());
  const int64_t start = cache != nullptr ? cache->length() : 0;
  auto h = embed_tokens(input_ids);
  const auto angles =
      rotary_angles(options.attention(), start, input_ids.size(1), h.scalar_type(), h.device());
  const bool checkpoint = gradient_checkpointing_ && is_training() && cache == nullptr &&
                          torch::GradMode::is_enabled() && !trace;
  torch::Tensor aux;
  int64_t moe = 0;
  for (int64_t i = 0; i < options.num_layers(); ++i) {
    auto l = layer(i);
    torch::Tensor layer_aux;
    detail::in_block("model.layers." + std::to_string(i), [&] {
      if (checkpoint) {
        auto out = CheckpointedLayer::apply(h, l.get(), angles);
        h = out[0];
        layer_aux = l->is_moe() ? out[1] : torch::Tensor();
      } else {
        auto out = l->forward(h, angles, cache);
        if (trace) {
          trace(i, h, out);
        }
        h = std::move(out.hidden);
        layer_aux = std::move(out.aux_loss);
      }
    });
    if (layer_aux.defined()) {
      aux = aux.defined() ? aux + layer_aux : layer_aux;
      ++moe;
    }
  }
  if (cache != nullptr) {
    cache->advance(input_ids.size(1));
  }
  aux =
      moe > 0 ? aux / static_cast<double>(moe) : torch::zeros({}, h.options().dtype(torch::kFloat));
  return {norm(h), aux};
}

torch::Tensor CausalLMImpl::logits(const torch::Tensor& hidden) {
  if (lm_head.is_empty()) {
    return torch::nn::functional::linear(hidden, embed_tokens->weight);
  }
  return lm_head(hidden);
}

CausalLMOutput CausalLMImpl::forward(const torch::Tensor& input_ids, KVCache* cache) {
  auto [hidden, aux] = hidden_states(input_ids, cache);
  return {logits(hidden), aux};
}

}  // namespace moeprune::lm
