#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace moeprune {

enum class ExpertActivation {
  kGelu,      ///< exact (erf) GELU
  kGeluTanh,  ///< tanh-approximate GELU (flax's nn.gelu default, used by vmoe)
  kRelu,      ///< HF Switch Transformers' default
  kSilu,      ///< Mixtral's SwiGLU gate
};

enum class ExpertKind {
  kMlp,    ///< w2(act(w1 x + b1)) + b2: the ViT MLP (V-MoE) and Switch's wi/wo
  kGated,  ///< w2(act(w1 x) * (w3 x)): SwiGLU with kSilu (Mixtral)
};

struct ExpertBankOptions {
  ExpertBankOptions(int64_t num_experts, int64_t d_model, int64_t hidden_dim)
      : num_experts_(num_experts), d_model_(d_model), hidden_dim_(hidden_dim) {}
  TORCH_ARG(int64_t, num_experts);
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, hidden_dim);
  TORCH_ARG(ExpertKind, kind) = ExpertKind::kMlp;
  TORCH_ARG(ExpertActivation, activation) = ExpertActivation::kGelu;
  /// Biases b1 and b2 (kMlp only).
  TORCH_ARG(bool, bias) = true;
};

/// E experts with stacked parameters, in input-major layout so each expert is x @ w:
/// w1 [E, d, F], b1 [E, F], w2 [E, F, d], b2 [E, d], and for kGated w3 [E, d, F] (up projection;
/// w1 is the gate). A bank can be reduced to a subset of its experts; the others are freed.
class ExpertBankImpl : public torch::nn::Cloneable<ExpertBankImpl> {
 public:
  explicit ExpertBankImpl(ExpertBankOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// Runs the experts on an expert-major buffer: rows [R, d], `counts` rows per held expert (in
  /// the bank's order, summing to R). Returns [R, d].
  torch::Tensor forward(const torch::Tensor& rows, const std::vector<int64_t>& counts);

  /// Keeps only `experts` (original ids, as numbered when the bank was built), freeing the rest.
  /// Parameters keep their identity (their data shrinks), so modules holding them stay valid.
  void keep_experts(std::vector<int64_t> experts);

  /// Original ids of the experts the bank holds, increasing.
  const std::vector<int64_t>& expert_ids() const { return expert_ids_; }
  /// Number of experts held.
  int64_t num_held() const { return static_cast<int64_t>(expert_ids_.size()); }
  /// [E] int64 on `device`: bank index of each original expert, -1 for the removed ones.
  torch::Tensor expert_map(const torch::Device& device = torch::kCPU) const;
  /// True when the bank still holds every expert it was built with.
  bool holds_all() const { return num_held() == options.num_experts(); }

  ExpertBankOptions options;
  torch::Tensor w1, b1, w2, b2, w3;

 private:
  std::vector<int64_t> expert_ids_;
};
TORCH_MODULE(ExpertBank);

}  // namespace moeprune
