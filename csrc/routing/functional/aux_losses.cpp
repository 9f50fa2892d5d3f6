#include <moeprune/routing/functional/aux_losses.h>

#include <torch/torch.h>

#include <cmath>

namespace moeprune::functional {
namespace {

// [T, E] -> [G, S, E]
torch::Tensor grouped(const torch::Tensor& x, int64_t group_size, const char* who) {
  TORCH_CHECK(x.dim() == 2, who, ": expected a 2-D [tokens, experts] tensor, got ", x.dim(), "-D");
  const int64_t T = x.size(0);
  const int64_t S = group_size > 0 ? group_size : std::max<int64_t>(T, 1);
  TORCH_CHECK(T % S == 0, who, ": ", T, " tokens do not split into groups of ", S);
  return x.reshape({T / S, S, x.size(1)});
}

// Squared coefficient of variation over the last dim, averaged over groups.
torch::Tensor cv_squared(const torch::Tensor& per_group) {
  const auto mean = per_group.mean(-1);
  const auto var = per_group.var(-1, /*unbiased=*/false);
  return (var / mean.square()).mean();
}

}  // namespace

torch::Tensor importance_loss(const torch::Tensor& probs, int64_t group_size) {
  if (probs.size(0) == 0) {
    return torch::zeros({}, probs.options());
  }
  return cv_squared(grouped(probs, group_size, "importance_loss").sum(1));
}

torch::Tensor load_loss(const torch::Tensor& logits, const torch::Tensor& noisy_logits, int64_t k,
                        double noise_std, int64_t group_size) {
  TORCH_CHECK(noise_std > 0.0, "load_loss: noise_std should be > 0, got ", noise_std);
  TORCH_CHECK(logits.sizes() == noisy_logits.sizes(),
              "load_loss: logits and noisy_logits should have one shape, got ", logits.sizes(),
              " and ", noisy_logits.sizes());
  TORCH_CHECK(k >= 1 && k <= logits.size(-1), "load_loss: k should be in [1, ", logits.size(-1),
              "], got ", k);
  if (logits.size(0) == 0) {
    return torch::zeros({}, logits.options());
  }
  const auto threshold = std::get<0>(noisy_logits.topk(k, -1)).select(-1, k - 1).unsqueeze(-1);
  // 1 - Phi(z) = erfc(z / sqrt 2) / 2
  const auto p = 0.5 * torch::erfc((threshold - logits) / (noise_std * std::sqrt(2.0)));
  return cv_squared(grouped(p, group_size, "load_loss").mean(1));
}

torch::Tensor load_balance_loss(const torch::Tensor& probs, const torch::Tensor& expert_index,
                                int64_t group_size) {
  TORCH_CHECK(expert_index.dim() == 2 && expert_index.size(0) == probs.size(0),
              "load_balance_loss: expert_index should be [", probs.size(0), ", k], got ",
              expert_index.sizes());
  if (probs.size(0) == 0) {
    return torch::zeros({}, probs.options());
  }
  const int64_t E = probs.size(1), k = expert_index.size(1);
  const auto p = grouped(probs, group_size, "load_balance_loss");  // [G, S, E]
  const int64_t G = p.size(0), S = p.size(1);
  // f[g, j, e]: share of the group's tokens whose j-th choice is e.
  // A scatter, not torch::one_hot, which may read the indices' range back from the device.
  const auto one_hot = torch::zeros({probs.size(0), k, E}, probs.options())
                           .scatter_(2, expert_index.clamp_min(0).unsqueeze(-1), 1.0)
                           .mul(expert_index.ge(0).unsqueeze(-1).to(probs.scalar_type()))
                           .reshape({G, S, k, E});
  const auto f = one_hot.mean(1);         // [G, k, E]
  const auto P = p.mean(1).unsqueeze(1);  // [G, 1, E]
  return (f * P).sum({1, 2}).mean() * static_cast<double>(E);
}

torch::Tensor z_loss(const torch::Tensor& logits) {
  if (logits.size(0) == 0) {
    return torch::zeros({}, logits.options());
  }
  return logits.logsumexp(-1).square().mean();
}

torch::Tensor weighted_sum(const AuxLosses& losses, const AuxLossWeights& weights) {
  torch::Tensor total;
  const std::pair<const torch::Tensor*, double> terms[] = {
      {&losses.importance, weights.importance()},
      {&losses.load, weights.load()},
      {&losses.load_balance, weights.load_balance()},
      {&losses.z_loss, weights.z_loss()}};
  for (const auto& [loss, weight] : terms) {
    if (!loss->defined()) {
      continue;
    }
    auto term = *loss * weight;
    total = total.defined() ? total + term : term;
  }
  return total.defined() ? total : torch::zeros({});
}

}  // namespace moeprune::functional
