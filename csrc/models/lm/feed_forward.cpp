#include <moeprune/models/lm/feed_forward.h>

#include "layers/activation.h"

#include <torch/torch.h>

namespace moeprune::lm {

torch::Tensor activate(const torch::Tensor& x, ExpertActivation kind) {
  return moeprune::detail::activate(x, kind);
}

GatedMLPImpl::GatedMLPImpl(GatedMLPOptions options_) : options(options_) {
  reset();
}

void GatedMLPImpl::reset() {
  TORCH_CHECK(options.hidden_size() >= 1 && options.intermediate_size() >= 1,
              "GatedMLP: sizes should be >= 1, got hidden ", options.hidden_size(),
              ", intermediate ", options.intermediate_size());
  using torch::nn::LinearOptions;
  const int64_t d = options.hidden_size(), f = options.intermediate_size();
  gate_proj = register_module("gate_proj", torch::nn::Linear(LinearOptions(d, f).bias(false)));
  up_proj = register_module("up_proj", torch::nn::Linear(LinearOptions(d, f).bias(false)));
  down_proj = register_module("down_proj", torch::nn::Linear(LinearOptions(f, d).bias(false)));
}

void GatedMLPImpl::pretty_print(std::ostream& stream) const {
  stream << "moeprune::lm::GatedMLP(" << options.hidden_size() << " -> "
         << options.intermediate_size() << ")";
}

torch::Tensor GatedMLPImpl::forward(const torch::Tensor& x) {
  return down_proj(activate(gate_proj(x), options.activation()) * up_proj(x));
}

SparseMoeBlockImpl::SparseMoeBlockImpl(SparseMoeBlockOptions options_)
    : options(std::move(options_)) {
  reset();
}

void SparseMoeBlockImpl::reset() {
  TORCH_CHECK(options.shared_expert_size() >= 0,
              "SparseMoeBlock: shared_expert_size should be >= 0, got ",
              options.shared_expert_size());
  TORCH_CHECK(!options.shared_expert_gate() || options.shared_expert_size() > 0,
              "SparseMoeBlock: a shared expert gate needs a shared expert");
  moe = register_module("moe", MoELayer(options.moe()));
  const int64_t d = options.moe().d_model();
  if (options.shared_expert_size() > 0) {
    shared_expert = register_module(
        "shared_expert",
        GatedMLP(
            GatedMLPOptions(d, options.shared_expert_size()).activation(options.activation())));
  }
  if (options.shared_expert_gate()) {
    shared_expert_gate = register_module(
        "shared_expert_gate", torch::nn::Linear(torch::nn::LinearOptions(d, 1).bias(false)));
  }
}

void SparseMoeBlockImpl::pretty_print(std::ostream& stream) const {
  stream << "moeprune::lm::SparseMoeBlock(shared_expert=" << options.shared_expert_size()
         << (options.shared_expert_gate() ? ", gated" : "") << ")";
}

void SparseMoeBlockImpl::set_moe(MoELayer layer) {
  TORCH_CHECK(layer->options.d_model() == options.moe().d_model(),
              "SparseMoeBlock: the new MoE layer has width ", layer->options.d_model(),
              ", the block ", options.moe().d_model());
  moe = replace_module("moe", std::move(layer));
  options.moe(moe->options);
}

SparseMoeBlockOutput SparseMoeBlockImpl::forward(const torch::Tensor& x) {
  auto routed = moe->forward(x);
  SparseMoeBlockOutput out{std::move(routed.output), std::move(routed.aux_loss)};
  if (!shared_expert.is_empty()) {
    auto shared = shared_expert(x);
    if (!shared_expert_gate.is_empty()) {
      shared = torch::sigmoid(shared_expert_gate(x)) * shared;
    }
    out.output = out.output + shared;
  }
  return out;
}

}  // namespace moeprune::lm
