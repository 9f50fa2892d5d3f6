#include <moeprune/compression/low_rank.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace moeprune::compression {

void factorize_experts(const MoEView& view, int64_t rank, std::vector<int64_t> keys) {
  const auto layers = view.layer_map();
  if (keys.empty()) {
    for (const auto& [key, entry] : layers) {
      keys.push_back(key);
    }
  }
  TORCH_CHECK(!keys.empty(), "factorize_experts: the model has no MoE layers");
  for (const int64_t key : keys) {
    const auto it = layers.find(key);
    TORCH_CHECK(it != layers.end(), "factorize_experts: the model has no MoE layer keyed ", key);
    MoELayer layer = it->second.layer;
    layer->experts()->factorize(rank);
  }
}

SparsePruner::SparsePruner(const MoEView& view, SparsePruningOptions options) : options_(options) {
  TORCH_CHECK(options_.final_density() > 0 && options_.final_density() <= 1,
              "SparsePruner: final_density should be in (0, 1], got ", options_.final_density());
  TORCH_CHECK(options_.beta1() >= 0 && options_.beta1() < 1,
              "SparsePruner: beta1 should be in [0, 1), got ", options_.beta1());
  TORCH_CHECK(options_.beta2() > 0 && options_.beta2() <= 1,
              "SparsePruner: beta2 should be in (0, 1], got ", options_.beta2());
  TORCH_CHECK(options_.warmup_steps() >= 0 && options_.initial_warmup() >= 0 &&
                  options_.final_warmup() >= 0,
              "SparsePruner: the warm-up lengths should be >= 0");
  for (const auto& entry : view.layers()) {
    auto bank = entry.layer->experts();
    for (auto& [weight, mask] : bank->sparse_parts()) {
      parts_.push_back({weight, mask, torch::zeros_like(weight), torch::zeros_like(weight)});
    }
  }
  TORCH_CHECK(!parts_.empty(),
              "SparsePruner: the model has no factorised experts (compression::factorize_experts "
              "first)");
}

double SparsePruner::density_at(int64_t step, int64_t total) const {
  TORCH_CHECK(total >= 1 && step >= 0 && step < total, "SparsePruner: step ", step,
              " is outside a run of ", total, " steps");
  // MC-SMoE's schedule_threshold_comb: dense, then a cubic fall, then the final density (at the
  // last step at the latest, also when final_warmup * warmup_steps is 0).
  const int64_t w = options_.warmup_steps();
  const int64_t start = options_.initial_warmup() * w;
  const int64_t end = total - options_.final_warmup() * w;
  const double final_density = options_.final_density();
  if (step < start) {
    return 1.0;
  }
  if (step + 1 >= end || end <= start) {
    return final_density;
  }
  const double progress = static_cast<double>(step - start) / static_cast<double>(end - start);
  return final_density + (1.0 - final_density) * std::pow(1.0 - progress, 3);
}

void SparsePruner::after_backward(int64_t /*step*/, int64_t /*total*/) {
  torch::NoGradGuard no_grad;
  const double b1 = options_.beta1(), b2 = options_.beta2();
  for (auto& p : parts_) {
    if (!p.weight.grad().defined()) {
      continue;
    }
    const auto score = (p.weight * p.weight.grad()).abs();
    if (!seen_gradient_) {
      p.importance.copy_(score);
      continue;
    }
    p.importance.mul_(b1).add_(score, 1.0 - b1);
    if (b2 < 1.0) {
      p.uncertainty.mul_(b2).add_((score - p.importance).abs(), 1.0 - b2);
    }
  }
  seen_gradient_ = true;
}

void SparsePruner::after_step(int64_t step, int64_t total) {
  const double density = density_at(step, total);
  if (density < 1.0) {
    prune_to(density);
  }
}

void SparsePruner::prune_to(double density) {
  TORCH_CHECK(density > 0 && density <= 1, "SparsePruner: density should be in (0, 1], got ",
              density);
  pruned_to_ = density;
  torch::NoGradGuard no_grad;
  // One score per output unit: the mean over its inputs (MC-SMoE: structured_method 'mean',
  // direction 'row' of the [out, in] weight), compared across every layer and expert.
  std::vector<torch::Tensor> unit_scores;
  for (const auto& p : parts_) {
    auto s = p.importance;
    if (options_.beta2() < 1.0) {
      s = s * p.uncertainty;
    }
    unit_scores.push_back(s.mean(1).reshape({-1}).to(torch::kDouble).cpu());
  }
  const auto all = torch::cat(unit_scores);
  const int64_t n = all.size(0);
  const auto pruned = static_cast<int64_t>(std::floor(static_cast<double>(n) * (1.0 - density)));
  auto keep = torch::ones({n}, torch::kBool);
  if (pruned > 0) {
    const auto order = std::get<1>(all.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
    keep.index_put_({order.narrow(0, 0, pruned)}, false);
  }
  int64_t offset = 0;
  for (auto& p : parts_) {
    const int64_t units = p.mask.numel();
    const auto m = keep.narrow(0, offset, units).view(p.mask.sizes()).to(p.mask.options());
    offset += units;
    p.mask.copy_(m);
    p.weight.mul_(m.unsqueeze(1));
  }
}

void prune_sparse_once(const MoEView& view, const std::function<void()>& backward, double density) {
  SparsePruner pruner(view, SparsePruningOptions().final_density(density).beta1(0.0));
  backward();
  pruner.after_backward(0, 1);
  pruner.prune_to(density);
  for (const auto& entry : view.layers()) {
    for (auto& [weight, mask] : entry.layer->experts()->sparse_parts()) {
      weight.mutable_grad() = torch::Tensor();
    }
  }
}

double SparsePruner::density() const {
  double kept = 0, total = 0;
  for (const auto& p : parts_) {
    kept += p.mask.sum().item<double>();
    total += static_cast<double>(p.mask.numel());
  }
  return total > 0 ? kept / total : 1.0;
}

}  // namespace moeprune::compression
