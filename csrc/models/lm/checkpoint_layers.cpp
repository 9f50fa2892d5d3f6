#include <moeprune/models/lm/checkpoint_layers.h>

#include <torch/torch.h>

#include <algorithm>
#include <utility>

#include "hf/config.h"
#include "hf/default_dtype.h"
#include "models/lm/checkpoint_tensors.h"
#include "models/lm/families/family.h"
#include "models/lm/hf_architecture.h"

namespace moeprune::lm {

CheckpointLayers::CheckpointLayers(const std::string& directory, const LoadOptions& options)
    : CheckpointLayers(hf::Source(directory), options) {}

CheckpointLayers::CheckpointLayers(hf::Source source, const LoadOptions& options)
    : source_(std::move(source)),
      load_(options),
      options_(detail::checkpoint_model_options(source_.config(), source_.info())),
      dropped_mlp_(detail::recorded_layer_drop(source_.config(), options_)) {
  const auto dtype = options.dtype();
  TORCH_CHECK(dtype == torch::kFloat || dtype == torch::kBFloat16 || dtype == torch::kHalf ||
                  dtype == torch::kDouble,
              "CheckpointLayers: dtype should be floating point, got ", dtype);
}

torch::Tensor CheckpointLayers::embed(const torch::Tensor& input_ids) const {
  TORCH_CHECK(input_ids.dim() == 2 && input_ids.scalar_type() == torch::kLong,
              "CheckpointLayers::embed: input_ids should be [B, S] int64, got ", input_ids.sizes(),
              " ", input_ids.scalar_type());
  if (input_ids.numel() > 0) {
    const auto lo = input_ids.min().item<int64_t>(), hi = input_ids.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < options_.vocab_size(), directory(), ": token ids should be in [0, ",
                options_.vocab_size(), "), found ", lo < 0 ? lo : hi);
  }
  torch::NoGradGuard no_grad;
  auto weight = torch::empty({options_.vocab_size(), options_.hidden_size()},
                             torch::TensorOptions().dtype(dtype()));
  detail::load_tensor_into(checkpoint(), "model.embed_tokens.weight", weight,
                           options_.model_type());
  return torch::embedding(weight, input_ids);
}

DecoderLayer CheckpointLayers::layer(int64_t index) const {
  TORCH_CHECK(index >= 0 && index < num_layers(), directory(), ": decoder layer ", index,
              " is outside [0, ", num_layers(), ")");
  // A shell with one-unit experts whose tensors the checkpoint's replace (load_causal_lm).
  auto shell = options_;
  auto placeholder = *options_.moe();
  placeholder.hidden_dim(1);
  shell.moe(placeholder);
  DecoderLayer layer{nullptr};
  {
    hf::detail::DefaultDtype guard(dtype());
    layer = DecoderLayer(shell, index);
  }
  layer->to(dtype());
  layer->options = options_;
  torch::NoGradGuard no_grad;
  detail::NamedTensors named;
  detail::add_layer_tensors(named, options_, *layer);
  for (auto& [name, param] : named) {
    detail::load_tensor_into(checkpoint(), name, param, options_.model_type());
  }
  if (layer->is_moe()) {
    const auto ref =
        std::find_if(info().layers.begin(), info().layers.end(),
                     [&](const hf::MoELayerRef& r) { return r.decoder_layer == index; });
    TORCH_CHECK(ref != info().layers.end(), directory(), ": decoder layer ", index,
                " should hold a MoE layer");
    auto moe = hf::load_moe_layer(checkpoint(), info(), *ref, hf::LoadOptions().dtype(dtype()));
    moe->options.aux_loss_weights(options_.moe()->aux_loss_weights());
    layer->moe_block->set_moe(moe);
  }
  if (std::find(dropped_mlp_.begin(), dropped_mlp_.end(), index) != dropped_mlp_.end()) {
    layer->drop_mlp();
  }
  layer->eval();
  return layer;
}

torch::Tensor CheckpointLayers::logits(const torch::Tensor& hidden) const {
  torch::NoGradGuard no_grad;
  const auto d = options_.hidden_size();
  RMSNorm norm(RMSNormOptions(d).eps(options_.rms_norm_eps()));
  norm->to(dtype());
  detail::load_tensor_into(checkpoint(), "model.norm.weight", norm->weight, options_.model_type());
  auto head = torch::empty({options_.vocab_size(), d}, torch::TensorOptions().dtype(dtype()));
  const bool tied = options_.tie_word_embeddings();
  detail::load_tensor_into(checkpoint(), tied ? "model.embed_tokens.weight" : "lm_head.weight",
                           head, options_.model_type());
  return torch::nn::functional::linear(norm(hidden), head);
}

void CheckpointLayers::release_layer(int64_t index) const {
  const auto prefix = detail::layer_prefix(index);
  for (const auto& name : checkpoint().names()) {
    if (name.rfind(prefix, 0) == 0) checkpoint().release(name);
  }
}

void CheckpointLayers::release_embedding() const {
  const std::string name = "model.embed_tokens.weight";
  checkpoint().release(name);
}

std::string CheckpointLayers::moe_name(int64_t index) const {
  return detail::layer_prefix(index) + family(options_.model_type()).moe_block();
}

}  // namespace moeprune::lm
