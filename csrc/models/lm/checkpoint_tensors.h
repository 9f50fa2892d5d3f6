#pragma once

// Hugging Face tensor names of a decoder layer's dense parameters, shared by the whole-model
// loader and writer (checkpoint.cpp) and the layer-at-a-time reader (checkpoint_layers.cpp).
#include <moeprune/models/lm/decoder_layer.h>

#include <moeprune/hf/checkpoint.h>
#include <moeprune/io/safetensors.h>
#include <moeprune/layers/linear_capture.h>

#include "hf/config.h"

#include <c10/util/ArrayRef.h>

#include <string>
#include <utility>
#include <vector>

namespace moeprune::lm::detail {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

/// "model.layers.<i>."
std::string layer_prefix(int64_t i);

/// Appends every parameter of decoder layer `layer` outside its MoE layer (router and routed
/// experts), by Hugging Face name: norms, attention, dense MLP or shared expert. A layer whose
/// MoE block Layer Drop removed gets the zero block's dense tensors save_causal_lm writes.
void add_layer_tensors(NamedTensors& out, const CausalLMOptions& o, DecoderLayerImpl& layer);

/// The dense linear layers of decoder layer `layer` (attention projections, a MoE block's shared
/// expert, a dense layer's MLP; not the shared expert's gate), by Hugging Face module path, with
/// `block` as their block key.
std::vector<LinearEntry> layer_linears(const CausalLMOptions& o, DecoderLayerImpl& layer,
                                       int64_t block);

/// The MoE blocks a moeprune checkpoint records as removed by Layer Drop (config.json's
/// "moeprune": {"dropped_mlp_layers": [...]}); the checkpoint holds them as zero blocks.
std::vector<int64_t> recorded_layer_drop(const hf::Config& config, const CausalLMOptions& o);

/// The model's options from its config.json and the MoE layers found in its tensors: which
/// decoder layers are MoE, and the MoE layer options (with the config's load-balance weight).
CausalLMOptions checkpoint_model_options(const hf::Config& config, const hf::ModelInfo& info);

/// Replaces `param`'s data with checkpoint tensor `name` (memory-mapped when it already has
/// param's dtype, converted otherwise); refuses, naming the folder and tensor, a missing tensor
/// or one whose shape differs from param's.
void load_tensor_into(const safetensors::Checkpoint& checkpoint, const std::string& name,
                      torch::Tensor& param, const std::string& model_type);

/// "[a, b, c]"
std::string shape_text(c10::IntArrayRef shape);

}  // namespace moeprune::lm::detail
