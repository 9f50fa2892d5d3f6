#pragma once

// The two kinds of feed-forward block of a decoder layer: a dense SwiGLU MLP and a MoE block
// (the routed experts of a MoELayer plus an optional shared expert).
#include <moeprune/layers/moe_layer.h>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace moeprune::lm {

struct GatedMLPOptions {
  GatedMLPOptions(int64_t hidden_size, int64_t intermediate_size)
      : hidden_size_(hidden_size), intermediate_size_(intermediate_size) {}
  TORCH_ARG(int64_t, hidden_size);
  TORCH_ARG(int64_t, intermediate_size);
  TORCH_ARG(ExpertActivation, activation) = ExpertActivation::kSilu;
};

/// down_proj(act(gate_proj x) * up_proj x), without biases (LlamaMLP, MixtralBlockSparseTop2MLP).
class GatedMLPImpl : public torch::nn::Cloneable<GatedMLPImpl> {
 public:
  explicit GatedMLPImpl(GatedMLPOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& x);

  GatedMLPOptions options;
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(GatedMLP);

/// The activation `kind` applied elementwise.
torch::Tensor activate(const torch::Tensor& x, ExpertActivation kind);

struct SparseMoeBlockOptions {
  SparseMoeBlockOptions(MoELayerOptions moe) : moe_(std::move(moe)) {}  // NOLINT
  TORCH_ARG(MoELayerOptions, moe);
  /// Width of the shared expert; 0: none.
  TORCH_ARG(int64_t, shared_expert_size) = 0;
  /// sigmoid(x . w) scales the shared expert's output (Qwen2-MoE).
  TORCH_ARG(bool, shared_expert_gate) = false;
  TORCH_ARG(ExpertActivation, activation) = ExpertActivation::kSilu;
};

struct SparseMoeBlockOutput {
  torch::Tensor output;
  torch::Tensor aux_loss;  ///< the MoE layer's weighted auxiliary losses
};

/// y = MoE(x) [+ g(x) * Shared(x)], g = sigmoid(shared_expert_gate x) or 1
/// (Qwen2MoeSparseMoeBlock; DeepseekMoE with n_shared_experts). The shared expert is always on:
/// criteria see only the routed experts (the MoE view lists `moe`).
class SparseMoeBlockImpl : public torch::nn::Cloneable<SparseMoeBlockImpl> {
 public:
  explicit SparseMoeBlockImpl(SparseMoeBlockOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  SparseMoeBlockOutput forward(const torch::Tensor& x);
  /// Replaces the MoE layer (a layer read from a checkpoint), keeping the shared expert.
  void set_moe(MoELayer layer);

  SparseMoeBlockOptions options;
  MoELayer moe{nullptr};
  GatedMLP shared_expert{nullptr};
  torch::nn::Linear shared_expert_gate{nullptr};
};
TORCH_MODULE(SparseMoeBlock);

}  // namespace moeprune::lm
