#include "train/data_parallel.h"

#include <torch/torch.h>

#include <cmath>
#include <unordered_set>

namespace moeprune::detail {

GradientAverager::GradientAverager(distributed::ProcessGroup group,
                                   const std::vector<torch::Tensor>& params,
                                   const std::vector<torch::Tensor>& local_experts,
                                   int64_t bucket_bytes)
    : group_(std::move(group)), local_(local_experts), bucket_bytes_(bucket_bytes) {
  std::unordered_set<const void*> local;
  for (const auto& p : local_experts) {
    local.insert(p.unsafeGetTensorImpl());
  }
  for (const auto& p : params) {
    if (p.requires_grad() && local.count(p.unsafeGetTensorImpl()) == 0) {
      replicated_.push_back(p);
    }
  }
}

std::unique_ptr<GradientAverager> GradientAverager::for_model(
    const distributed::ProcessGroup& group, const std::vector<torch::Tensor>& params,
    const std::vector<std::pair<int64_t, MoELayer>>& moe_layers) {
  std::vector<torch::Tensor> local_experts;
  for (const auto& [key, layer] : moe_layers) {
    if (layer->expert_exchange()) {
      for (const auto& p : layer->experts()->parameters()) {
        local_experts.push_back(p);
      }
    }
  }
  return std::make_unique<GradientAverager>(group, params, local_experts);
}

void GradientAverager::average() {
  const double W = static_cast<double>(group_.world_size());
  torch::NoGradGuard no_grad;
  // Buckets of one dtype up to bucket_bytes, flattened, summed over the processes, copied back.
  // A parameter this process did not use still sends zeros: every process sends every bucket.
  size_t i = 0;
  while (i < replicated_.size()) {
    std::vector<torch::Tensor> bucket;
    int64_t bytes = 0;
    const auto dtype = replicated_[i].scalar_type();
    for (;
         i < replicated_.size() && replicated_[i].scalar_type() == dtype &&
         (bucket.empty() || bytes + replicated_[i].nbytes() <= static_cast<size_t>(bucket_bytes_));
         ++i) {
      auto& p = replicated_[i];
      if (!p.grad().defined()) {
        p.mutable_grad() = torch::zeros_like(p);
      }
      bucket.push_back(p.grad());
      bytes += static_cast<int64_t>(p.nbytes());
    }
    std::vector<torch::Tensor> flat{torch::cat([&] {
      std::vector<torch::Tensor> parts;
      for (const auto& g : bucket) {
        parts.push_back(g.reshape({-1}));
      }
      return parts;
    }())};
    group_.all_reduce_sum_(flat);
    flat[0].div_(W);
    int64_t at = 0;
    for (auto& g : bucket) {
      g.copy_(flat[0].narrow(0, at, g.numel()).view_as(g));
      at += g.numel();
    }
  }
  for (auto& p : local_) {
    if (p.grad().defined()) {
      p.mutable_grad().div_(W);
    }
  }
}

double GradientAverager::clip(double max_norm) {
  torch::NoGradGuard no_grad;
  // Squared sums on the gradients' device (one model, one device), read back once per list.
  const auto squared_sum = [](const std::vector<torch::Tensor>& params) {
    std::vector<torch::Tensor> sums;
    for (const auto& p : params) {
      if (p.grad().defined()) {
        sums.push_back(p.grad().to(torch::kDouble).pow(2).sum());
      }
    }
    return sums.empty() ? 0.0 : torch::stack(sums).sum().item<double>();
  };
  const double replicated = squared_sum(replicated_), local = squared_sum(local_);
  const double norm =
      std::sqrt(replicated + mean(local) * static_cast<double>(group_.world_size()));
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) {
    for (auto* list : {&replicated_, &local_}) {
      for (auto& p : *list) {
        if (p.grad().defined()) {
          p.mutable_grad().mul_(coef);
        }
      }
    }
  }
  return norm;
}

double GradientAverager::mean(double value) const {
  return mean(std::vector<double>{value})[0];
}

std::vector<double> GradientAverager::mean(const std::vector<double>& values) const {
  std::vector<torch::Tensor> t{torch::tensor(values, torch::kDouble).to(group_.device())};
  group_.all_reduce_sum_(t);
  const auto sums = t[0].cpu();
  std::vector<double> means(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    means[i] =
        sums[static_cast<int64_t>(i)].item<double>() / static_cast<double>(group_.world_size());
  }
  return means;
}

}  // namespace moeprune::detail
