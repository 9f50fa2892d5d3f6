#pragma once

// Auxiliary losses that keep routers balanced. Each takes [T, E] router tensors and a routing
// group size (0: one group); per-group losses are averaged over groups.
#include <torch/arg.h>
#include <torch/types.h>

namespace moeprune::functional {

/// V-MoE importance loss (Riquelme et al. 2021, A.1; vmoe/nn/routing.py): per group,
/// imp_e = sum_t probs[t, e] and the loss is var(imp) / mean(imp)^2 (population variance), i.e.
/// the squared coefficient of variation. `probs` is the softmax of the clean logits.
torch::Tensor importance_loss(const torch::Tensor& probs, int64_t group_size = 0);

/// V-MoE load loss: thr_t = the k-th largest noisy logit of token t,
/// p[t, e] = 1 - Phi((thr_t - logits[t, e]) / noise_std), loss = CV^2 of mean_t p[t, e].
/// noise_std is the absolute standard deviation of the logit noise (V-MoE: 1/E); must be > 0.
torch::Tensor load_loss(const torch::Tensor& logits, const torch::Tensor& noisy_logits, int64_t k,
                        double noise_std, int64_t group_size = 0);

/// Switch/GShard load-balancing loss, in the form HF transformers uses for Switch (k = 1) and
/// Mixtral (k > 1): E * sum_j sum_e f[j, e] * P[e], f[j, e] = share of tokens whose j-th choice
/// is e, P[e] = mean_t probs[t, e]. `expert_index` is [T, k]. Equals 1 when perfectly balanced.
torch::Tensor load_balance_loss(const torch::Tensor& probs, const torch::Tensor& expert_index,
                                int64_t group_size = 0);

/// Router z-loss (ST-MoE, Zoph et al. 2022): mean_t logsumexp(logits[t])^2.
torch::Tensor z_loss(const torch::Tensor& logits);

/// The auxiliary losses a router reports (scalars; zero where a loss does not apply).
struct AuxLosses {
  torch::Tensor importance;
  torch::Tensor load;
  torch::Tensor load_balance;
  torch::Tensor z_loss;
};

/// Weights of the auxiliary losses in the training objective.
struct AuxLossWeights {
  TORCH_ARG(double, importance) = 0.0;
  TORCH_ARG(double, load) = 0.0;
  TORCH_ARG(double, load_balance) = 0.0;
  TORCH_ARG(double, z_loss) = 0.0;
};

/// sum of weight * loss over the four losses.
torch::Tensor weighted_sum(const AuxLosses& losses, const AuxLossWeights& weights);

}  // namespace moeprune::functional
