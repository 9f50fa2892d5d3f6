#pragma once

// The built-in expert-pruning criteria. Every score is "lower is pruned first".
#include <moeprune/pruning/criterion.h>

namespace moeprune::pruning {

/// Chowdhury et al., ICML 2024, "A Provably Effective Method for Pruning Experts in Fine-tuned
/// Sparse Mixture-of-Experts" (Algorithm 1; github nowazrabbani/MoE_Pruning): the signed change
/// of the router column's l2 norm, delta_s = ||W_ft[:, s]|| - ||W_pre[:, s]||. Experts whose
/// router grew least in fine-tuning are task-irrelevant and pruned first.
class RouterNormChange : public Criterion {
 public:
  std::string name() const override { return "router_norm_change"; }
  std::string description() const override;
  bool needs_pretrained() const override { return true; }
  torch::Tensor score_layer(const LayerScoringContext& context) const override;
};

/// V-MoE's importance (Riquelme et al. 2021, A.1): sum over calibration tokens of the expert's
/// softmax gate. The pruning paper's main baseline.
class Importance : public Criterion {
 public:
  std::string name() const override { return "importance"; }
  std::string description() const override;
  bool needs_data() const override { return true; }
  torch::Tensor score_layer(const LayerScoringContext& context) const override;
};

/// The fine-tuned router column's norm ||W_ft[:, s]|| (baseline in Chowdhury et al. 2024).
class RouterMagnitude : public Criterion {
 public:
  std::string name() const override { return "router_magnitude"; }
  std::string description() const override;
  torch::Tensor score_layer(const LayerScoringContext& context) const override;
};

/// Mean over the expert's hidden neurons of the change of the neuron's input-weight norm
/// ||w1_ft[s][:, j]|| - ||w1_pre[s][:, j]|| between pre-trained and fine-tuned (the "average
/// change of neuron norms" baseline of Chowdhury et al. 2024; their theory's neuron is w_j).
class NeuronMagnitudeChange : public Criterion {
 public:
  std::string name() const override { return "neuron_magnitude_change"; }
  std::string description() const override;
  bool needs_pretrained() const override { return true; }
  bool needs_expert_weights() const override { return true; }
  torch::Tensor score_layer(const LayerScoringContext& context) const override;
};

/// Routing frequency: calibration tokens whose top-k choices include the expert (before
/// capacity drops; for expert choice, tokens the expert picked). METHODS.md section 6.
class Frequency : public Criterion {
 public:
  std::string name() const override { return "frequency"; }
  std::string description() const override;
  bool needs_data() const override { return true; }
  torch::Tensor score_layer(const LayerScoringContext& context) const override;
};

/// REAP (Lasby et al. 2025, CerebrasResearch/reap): mean over the tokens routed to expert j of
/// g_j(x) * ||f_j(x)||_2, with g renormalised over the token's top-k. Never-routed experts
/// score 0.
class Reap : public Criterion {
 public:
  std::string name() const override { return "reap"; }
  std::string description() const override;
  bool needs_data() const override { return true; }
  bool needs_inputs() const override { return true; }
  bool needs_expert_weights() const override { return true; }
  torch::Tensor score_layer(const LayerScoringContext& context) const override;
};

/// Expert activation norm (EAN, REAP's baseline; METHODS.md section 8): mean over the tokens
/// routed to expert j of ||f_j(x)||_2, without the gate. Never-routed experts score 0.
class ExpertActivationNorm : public Criterion {
 public:
  std::string name() const override { return "ean"; }
  std::string description() const override;
  bool needs_data() const override { return true; }
  bool needs_inputs() const override { return true; }
  bool needs_expert_weights() const override { return true; }
  torch::Tensor score_layer(const LayerScoringContext& context) const override;
};

/// "Not All Experts are Equal" (Lu et al., ACL 2024): per layer, the kept subset whose layer
/// output on the calibration tokens is closest (Frobenius) to the unpruned output, the dropped
/// experts' router logits set to -inf (so tokens re-route among the kept experts). When the
/// caller says how many go per layer (prune_count) and C(E, n) <= max_subsets, every subset is
/// tried; otherwise experts are removed greedily, each time the one whose removal changes the
/// output least. Scores are per-layer ranks (the subset's experts lowest, each group ordered by
/// the error of removing that expert alone), so use them for plans with a count per layer.
/// Token-choice top-k routers without capacity (the language families) only.
class Naee : public Criterion {
 public:
  explicit Naee(int64_t prune_count = 0, int64_t max_subsets = 5000)
      : prune_count_(prune_count), max_subsets_(max_subsets) {}
  std::string name() const override { return "naee"; }
  std::string description() const override;
  bool needs_data() const override { return true; }
  bool needs_inputs() const override { return true; }
  bool needs_expert_weights() const override { return true; }
  void set_prune_count(int64_t n) override { prune_count_ = n; }
  torch::Tensor score_layer(const LayerScoringContext& context) const override;

 private:
  int64_t prune_count_, max_subsets_;
};

/// Random scores from the seed (a per-layer permutation, as the official code's baseline);
/// the same seed gives the same ranking.
class RandomCriterion : public Criterion {
 public:
  std::string name() const override { return "random"; }
  std::string description() const override;
  torch::Tensor score_layer(const LayerScoringContext& context) const override;
};

}  // namespace moeprune::pruning
