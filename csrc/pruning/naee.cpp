// NAEE, "Not All Experts are Equal" (Lu et al., ACL 2024; METHODS.md sections 6 and 8): per
// layer, the experts to drop are those whose removal, the dropped experts' logits set to -inf,
// changes the layer's output on the calibration tokens least (Frobenius norm).
#include <moeprune/pruning/builtin_criteria.h>

#include <torch/torch.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

namespace moeprune::pruning {
namespace {

// What the reconstruction needs, computed once per layer: each token's router probabilities over
// all experts, its candidate experts (those that can be among its top k after at most m experts
// are dropped: its top k + m, by decreasing probability, ties to the lower id as top_k_route
// breaks them) and their outputs.
struct Reconstruction {
  torch::Tensor probs;    // [T, E] float64
  torch::Tensor cand;     // [T, C] int64
  torch::Tensor cand_p;   // [T, C] float64, probs at cand
  torch::Tensor outputs;  // [T, C, d] float32
  torch::Tensor full;     // [T, d] float64, the output with every expert
  int64_t k = 1;
  bool renormalize = false;

  // The layer output with only the experts where `keep` [E] is true: each token's first k kept
  // candidates, weighted by the softmax over the kept experts (p_j / sum of kept p), divided by
  // their sum when the layer renormalises its top k.
  torch::Tensor output(const torch::Tensor& keep) const {
    const auto mask = keep.index_select(0, cand.reshape({-1})).view(cand.sizes());
    const auto chosen = mask & mask.to(torch::kLong).cumsum(1).le(k);
    const auto p = cand_p * chosen;
    const auto denom =
        renormalize ? p.sum(1, true) : (probs * keep.to(torch::kDouble)).sum(1, true);
    const auto w = p / denom.clamp_min(std::numeric_limits<double>::min());
    return (w.unsqueeze(-1) * outputs.to(torch::kDouble)).sum(1);
  }

  double error(const torch::Tensor& keep) const {
    return (output(keep) - full).pow(2).sum().item<double>();
  }
};

Reconstruction prepare(const LayerScoringContext& context, int64_t dropped) {
  torch::NoGradGuard no_grad;
  const auto& entry = context.finetuned;
  MoELayer layer = entry.layer;
  const auto& o = layer->options;
  TORCH_CHECK(o.routing().capacity_mode() == functional::CapacityMode::kDropless,
              "naee: MoE layer ", entry.name,
              " drops tokens at a capacity; the reconstruction assumes dropless routing");
  TORCH_CHECK(layer->experts()->holds_all() && layer->state().is_plain(), "naee: MoE layer ",
              entry.name, " is pruned or merged already; score the unpruned model");
  TORCH_CHECK(!context.calls.empty(), "naee: no calibration calls reached MoE layer ", entry.name);
  std::vector<torch::Tensor> inputs, probs;
  for (const auto& call : context.calls) {
    TORCH_CHECK(call.input.defined() && call.plan.router_probs.defined(),
                "naee: the calibration "
                "calls of MoE layer ",
                entry.name, " lack their input tokens or router probabilities");
    inputs.push_back(call.input.reshape({-1, call.input.size(-1)}));
    probs.push_back(call.plan.router_probs.to(torch::kDouble));
  }
  Reconstruction r;
  r.k = o.routing().k();
  r.renormalize = o.routing().renormalize();
  r.probs = torch::cat(probs).cpu();
  const auto x = torch::cat(inputs);
  const int64_t T = x.size(0), E = r.probs.size(1);
  const int64_t C = std::min(E, r.k + dropped);
  const auto order = std::get<1>(
      r.probs.sort(/*stable=*/std::optional<bool>(true), /*dim=*/1, /*descending=*/true));
  r.cand = order.narrow(1, 0, C).contiguous();
  r.cand_p = r.probs.gather(1, r.cand);
  // Every (token, candidate) pair through its expert, grouped by expert as the bank expects.
  const auto flat_expert = r.cand.reshape({-1});
  const auto by_expert = std::get<1>(
      flat_expert.sort(/*stable=*/std::optional<bool>(true), /*dim=*/0, /*descending=*/false));
  const auto token = by_expert.div(C, "floor");
  const auto counts_t = torch::bincount(flat_expert, {}, E);
  const std::vector<int64_t> counts(counts_t.data_ptr<int64_t>(), counts_t.data_ptr<int64_t>() + E);
  const auto rows = x.index_select(0, token.to(x.device()));
  const auto y = layer->experts()->forward(rows, counts).to(torch::kFloat).cpu();
  r.outputs = torch::empty({T * C, x.size(1)}, torch::kFloat)
                  .index_copy_(0, by_expert, y)
                  .view({T, C, x.size(1)});
  r.full = r.output(torch::ones({E}, torch::kBool));
  return r;
}

// The number of ways to pick `k` of `n`, saturating above `limit`.
double binomial(int64_t n, int64_t k, double limit) {
  double value = 1.0;
  for (int64_t i = 1; i <= k; ++i) {
    value = value * static_cast<double>(n - k + i) / static_cast<double>(i);
    if (value > limit) return limit + 1.0;
  }
  return value;
}

// Ranks `ids` by `key` (ascending, ties to the lower id) into scores first, first + 1, ...
void rank_into(torch::Tensor& scores, std::vector<int64_t> ids, const std::vector<double>& key,
               int64_t first) {
  std::stable_sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) { return key[a] < key[b]; });
  for (size_t i = 0; i < ids.size(); ++i) {
    scores[ids[i]] = static_cast<double>(first + static_cast<int64_t>(i));
  }
}

}  // namespace

std::string Naee::description() const {
  return "per layer, drop the experts whose removal (logits -inf) changes the layer output on "
         "calibration data least (NAEE, Lu et al. 2024; exhaustive or greedy)";
}

torch::Tensor Naee::score_layer(const LayerScoringContext& context) const {
  const auto& router = context.finetuned.layer->options.router();
  TORCH_CHECK(std::holds_alternative<TopKRouterConfig>(router), "naee: MoE layer ",
              context.finetuned.name, " does not route token-choice top-k (its router is ",
              router_name(router), "); the reconstruction is defined for it only");
  const int64_t E = context.finetuned.layer->router().num_experts();
  const int64_t k = context.finetuned.layer->options.routing().k();
  TORCH_CHECK(prune_count_ >= 0 && prune_count_ <= E - k, "naee: cannot prune ", prune_count_,
              " of MoE layer ", context.finetuned.name, "'s ", E, " experts (top-", k,
              " routing keeps at least ", k, ")");
  const int64_t dropped = prune_count_ > 0 ? prune_count_ : E - k;
  const auto r = prepare(context, dropped);
  // Each expert's error when removed alone orders the experts inside each group below.
  std::vector<double> alone(static_cast<size_t>(E));
  for (int64_t j = 0; j < E; ++j) {
    auto keep = torch::ones({E}, torch::kBool);
    keep[j] = false;
    alone[static_cast<size_t>(j)] = r.error(keep);
  }
  auto scores = torch::zeros({E}, torch::kDouble);
  if (prune_count_ > 0 && binomial(E, prune_count_, static_cast<double>(max_subsets_)) <=
                              static_cast<double>(max_subsets_)) {
    // Every subset of prune_count_ experts to drop (in lexicographic order: ties keep the first).
    std::vector<int64_t> pick(static_cast<size_t>(prune_count_));
    std::iota(pick.begin(), pick.end(), 0);
    std::vector<int64_t> best;
    double best_error = std::numeric_limits<double>::infinity();
    while (true) {
      auto keep = torch::ones({E}, torch::kBool);
      for (const int64_t j : pick) keep[j] = false;
      const double e = r.error(keep);
      if (e < best_error) {
        best_error = e;
        best = pick;
      }
      int64_t i = prune_count_ - 1;
      while (i >= 0 && pick[static_cast<size_t>(i)] == E - prune_count_ + i) --i;
      if (i < 0) break;
      ++pick[static_cast<size_t>(i)];
      for (int64_t j = i + 1; j < prune_count_; ++j) {
        pick[static_cast<size_t>(j)] = pick[static_cast<size_t>(j - 1)] + 1;
      }
    }
    std::vector<int64_t> kept;
    for (int64_t j = 0; j < E; ++j) {
      if (std::find(best.begin(), best.end(), j) == best.end()) kept.push_back(j);
    }
    rank_into(scores, best, alone, 0);
    rank_into(scores, kept, alone, prune_count_);
    return scores;
  }
  // Greedy: remove, one at a time, the expert whose removal leaves the output closest.
  auto keep = torch::ones({E}, torch::kBool);
  std::vector<int64_t> kept(static_cast<size_t>(E));
  std::iota(kept.begin(), kept.end(), 0);
  for (int64_t step = 0; step < dropped; ++step) {
    size_t best = 0;
    double best_error = std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < kept.size(); ++i) {
      keep[kept[i]] = false;
      const double e = r.error(keep);
      keep[kept[i]] = true;
      if (e < best_error) {
        best_error = e;
        best = i;
      }
    }
    keep[kept[best]] = false;
    scores[kept[best]] = static_cast<double>(step);
    kept.erase(kept.begin() + static_cast<std::ptrdiff_t>(best));
  }
  rank_into(scores, kept, alone, dropped);
  return scores;
}

}  // namespace moeprune::pruning
