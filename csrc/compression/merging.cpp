#include <moeprune/compression/merging.h>

#include <moeprune/compression/expert_alignment.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <numeric>
#include <sstream>

namespace moeprune::compression {
namespace {

MoELayer layer_of(const std::map<int64_t, MoELayerEntry>& layers, int64_t key, const char* who) {
  const auto it = layers.find(key);
  TORCH_CHECK(it != layers.end(), who, ": the model has no MoE layer keyed ", key);
  return it->second.layer;
}

const torch::Tensor& frequency_of(const ExpertUsage& usage, int64_t block, int64_t num_experts,
                                  const char* who) {
  const auto it = usage.frequency.find(block);
  TORCH_CHECK(it != usage.frequency.end(), who, ": no usage frequencies for MoE layer ", block,
              " (collect_expert_usage on this model)");
  TORCH_CHECK(it->second.dim() == 1 && it->second.size(0) == num_experts, who,
              ": usage frequencies of MoE layer ", block, " are ", it->second.sizes(),
              ", expected [", num_experts, "]");
  return it->second;
}

// Held experts of a bank that can still be merged, refusing ensembles and merged banks.
std::vector<int64_t> mergeable_experts(const MoELayer& layer, int64_t block, const char* who) {
  TORCH_CHECK(layer->router().can_merge(), who, ": MoE layer ", block,
              " has an E3-MoE ensemble router; its members route separately and are not merged");
  TORCH_CHECK(!layer->experts()->is_merged(), who, ": MoE layer ", block, " is already merged");
  TORCH_CHECK(layer->router().num_experts() == layer->experts()->options.num_experts(), who,
              ": MoE layer ", block, " dropped router columns; merging needs the full router");
  TORCH_CHECK(layer->experts()->options.rank() == 0, who, ": MoE layer ", block,
              " is factorised (low rank); merge before compressing");
  return layer->experts()->expert_ids();
}

torch::Tensor cosine_matrix(const torch::Tensor& vectors) {  // rows are the vectors
  const auto v = vectors.to(torch::kDouble);
  const auto unit = v / v.norm(2, 1, /*keepdim=*/true).clamp_min(1e-12);
  return unit.mm(unit.t());
}

// Expert `id`'s weights as one vector, its hidden neurons in the order that aligns it with
// expert `reference` (so weight cosine compares functions, not neuron orders).
torch::Tensor aligned_weights(const ExpertBank& bank, int64_t reference, int64_t id) {
  const int64_t local = bank->position_of(id);
  const auto perm =
      torch::tensor(neuron_alignment(bank, reference, id), torch::kLong).to(bank->w1.device());
  std::vector<torch::Tensor> parts = {bank->w1[local].index_select(1, perm),
                                      bank->w2[local].index_select(0, perm)};
  if (bank->b1.defined()) {
    parts.push_back(bank->b1[local].index_select(0, perm));
    parts.push_back(bank->b2[local]);
  }
  if (bank->w3.defined()) {
    parts.push_back(bank->w3[local].index_select(1, perm));
  }
  for (auto& p : parts) {
    p = p.detach().reshape({-1}).to(torch::kDouble);
  }
  return torch::cat(parts);
}

}  // namespace

void add_expert_usage(ExpertUsage& usage, const MoELayerEntry& entry, const LayerCalls& calls) {
  torch::Tensor counts;
  std::vector<torch::Tensor> logits;
  for (const auto& call : calls) {
    const auto& plan = call.plan;
    const int64_t E = plan.num_router_experts();
    const auto chosen = plan.expert_index.masked_select(plan.expert_index.ge(0));
    const auto c = torch::bincount(chosen.cpu(), {}, E).to(torch::kDouble);
    counts = counts.defined() ? counts + c : c;
    logits.push_back(plan.router_logits.detach().to(torch::kFloat).cpu());
  }
  TORCH_CHECK(!calls.empty(), "collect_expert_usage: the calibration data was empty");
  TORCH_CHECK(counts.sum().item<double>() > 0, "collect_expert_usage: MoE layer ", entry.name,
              " routed no calibration token");
  usage.frequency[entry.key] = counts / counts.sum();
  usage.router_logits[entry.key] = torch::cat(logits);
}

ExpertUsage collect_expert_usage(const MoEView& view) {
  TORCH_CHECK(view.has_calibration(), "collect_expert_usage: no calibration data");
  TORCH_CHECK(!view.layers().empty(), "collect_expert_usage: the model has no MoE layers");
  ExpertUsage usage;
  view.walk(/*with_inputs=*/false, [&](const MoELayerEntry& entry, const LayerCalls& calls) {
    add_expert_usage(usage, entry, calls);
  });
  return usage;
}

MergeGroups group_experts(const MoEView& view, const ExpertUsage& usage,
                          const std::map<int64_t, int64_t>& counts, MergeSimilarity similarity) {
  constexpr const char* who = "group_experts";
  const auto layers = view.layer_map();
  MergeGroups out;
  for (const auto& [block, count] : counts) {
    const auto layer = layer_of(layers, block, who);
    const auto held = mergeable_experts(layer, block, who);
    const int64_t n = static_cast<int64_t>(held.size());
    TORCH_CHECK(count >= 1 && count <= n, who, ": MoE layer ", block, " holds ", n,
                " experts; cannot make ", count, " groups");
    const auto freq = frequency_of(usage, block, layer->router().num_experts(), who);
    const auto f = freq.accessor<double, 1>();
    // Positions in `held`, most used first (stable: equal frequencies go to the lower id).
    std::vector<int64_t> by_use(static_cast<size_t>(n));
    std::iota(by_use.begin(), by_use.end(), 0);
    std::stable_sort(by_use.begin(), by_use.end(),
                     [&](int64_t a, int64_t b) { return f[held[a]] > f[held[b]]; });

    torch::Tensor sim;
    if (similarity == MergeSimilarity::kRouterLogits) {
      const auto it = usage.router_logits.find(block);
      TORCH_CHECK(it != usage.router_logits.end(), who, ": no router logits for MoE layer ", block);
      const auto columns = torch::tensor(held, torch::kLong);
      sim = cosine_matrix(it->second.index_select(1, columns).t());
    } else {
      // Every expert aligned to the layer's most used one, as MC-SMoE aligns a layer to one
      // reference before comparing.
      const auto bank = layer->experts();
      std::vector<torch::Tensor> rows;
      for (int64_t i = 0; i < n; ++i) {
        rows.push_back(aligned_weights(bank, held[by_use[0]], held[i]));
      }
      sim = cosine_matrix(torch::stack(rows));
    }
    const auto s = sim.accessor<double, 2>();
    std::vector<std::vector<int64_t>> groups(static_cast<size_t>(count));
    for (int64_t g = 0; g < count; ++g) {
      groups[static_cast<size_t>(g)].push_back(held[by_use[g]]);
    }
    std::vector<std::vector<int64_t>> members(static_cast<size_t>(count));
    for (int64_t r = count; r < n; ++r) {
      const int64_t i = by_use[r];
      int64_t best = 0;
      for (int64_t g = 1; g < count; ++g) {
        if (s[i][by_use[g]] > s[i][by_use[best]]) {
          best = g;
        }
      }
      members[static_cast<size_t>(best)].push_back(held[i]);
    }
    for (int64_t g = 0; g < count; ++g) {
      auto& m = members[static_cast<size_t>(g)];
      std::sort(m.begin(), m.end());
      groups[static_cast<size_t>(g)].insert(groups[static_cast<size_t>(g)].end(), m.begin(),
                                            m.end());
    }
    out[block] = std::move(groups);
  }
  return out;
}

std::map<int64_t, int64_t> same_group_count(const MoEView& view, int64_t groups) {
  std::map<int64_t, int64_t> counts;
  for (const auto& entry : view.layers()) {
    counts[entry.key] = groups;
  }
  TORCH_CHECK(!counts.empty(), "same_group_count: the model has no MoE layers");
  return counts;
}

std::map<int64_t, int64_t> global_group_counts(const MoEView& view, const ExpertUsage& usage,
                                               int64_t total) {
  constexpr const char* who = "global_group_counts";
  struct Candidate {
    bool forced;
    double frequency;
    int64_t block, expert;
  };
  std::vector<Candidate> all;
  std::map<int64_t, int64_t> counts;
  for (const auto& entry : view.layers()) {
    const auto block = entry.key;
    const auto& layer = entry.layer;
    const auto held = mergeable_experts(layer, block, who);
    const auto freq = frequency_of(usage, block, layer->router().num_experts(), who);
    const auto f = freq.accessor<double, 1>();
    int64_t top = held.front();
    for (const int64_t e : held) {
      top = f[e] > f[top] ? e : top;
    }
    for (const int64_t e : held) {
      all.push_back({e == top, f[e], block, e});
    }
    counts[block] = 0;
  }
  const auto layers = static_cast<int64_t>(counts.size());
  TORCH_CHECK(total >= layers && total <= static_cast<int64_t>(all.size()), who, ": ", total,
              " groups for ", layers, " MoE layers holding ", all.size(), " experts; give between ",
              layers, " and ", all.size());
  std::stable_sort(all.begin(), all.end(), [](const Candidate& a, const Candidate& b) {
    return a.forced != b.forced ? a.forced : a.frequency > b.frequency;
  });
  for (int64_t i = 0; i < total; ++i) {
    ++counts[all[static_cast<size_t>(i)].block];
  }
  return counts;
}

void merge_experts(const MoEView& view, const MergeGroups& groups, const ExpertUsage& usage,
                   bool align) {
  constexpr const char* who = "merge_experts";
  const auto layers = view.layer_map();
  // Every block's groups are checked before any weight changes: each names held experts only,
  // none twice, and together all of them (an expert left out would silently be dropped).
  for (const auto& [block, gs] : groups) {
    const auto layer = layer_of(layers, block, who);
    const auto held = mergeable_experts(layer, block, who);
    frequency_of(usage, block, layer->router().num_experts(), who);
    std::vector<char> seen(static_cast<size_t>(layer->router().num_experts()), 0);
    size_t named = 0;
    for (const auto& g : gs) {
      TORCH_CHECK(!g.empty(), who, ": MoE layer ", block, " has an empty group");
      for (const int64_t e : g) {
        TORCH_CHECK(std::find(held.begin(), held.end(), e) != held.end(), who, ": MoE layer ",
                    block, " does not hold expert ", e);
        TORCH_CHECK(!seen[static_cast<size_t>(e)], who, ": MoE layer ", block, " names expert ", e,
                    " in two groups");
        seen[static_cast<size_t>(e)] = 1;
        ++named;
      }
    }
    if (named != held.size()) {
      std::vector<int64_t> missing;
      for (const int64_t e : held) {
        if (!seen[static_cast<size_t>(e)]) {
          missing.push_back(e);
        }
      }
      TORCH_CHECK(false, who, ": MoE layer ", block, "'s groups leave out expert(s) ",
                  c10::Join(", ", missing),
                  "; every held expert belongs to a group (prune first "
                  "to remove experts)");
    }
  }
  for (const auto& [block, gs] : groups) {
    auto layer = layer_of(layers, block, who);
    auto bank = layer->experts();
    const auto& freq = usage.frequency.at(block);
    if (align) {
      for (const auto& g : gs) {
        align_experts(bank, g.front(), {g.begin() + 1, g.end()});
      }
    }
    // Frequency-weighted averages, one per group and parameter, in the bank's order.
    const auto params = bank->named_parameters(/*recurse=*/false);
    std::vector<std::vector<torch::Tensor>> merged(params.size());
    {
      torch::NoGradGuard no_grad;
      for (const auto& g : gs) {
        std::vector<int64_t> local;
        for (const int64_t e : g) {
          local.push_back(bank->position_of(e));
        }
        auto w = freq.index_select(0, torch::tensor(g, torch::kLong));
        w = w.sum().item<double>() > 0 ? w / w.sum()
                                       : torch::full_like(w, 1.0 / static_cast<double>(g.size()));
        const auto index = torch::tensor(local, torch::kLong).to(bank->w1.device());
        size_t i = 0;
        for (const auto& p : params) {
          const auto members = p.value().index_select(0, index);
          auto shape = std::vector<int64_t>(members.dim(), 1);
          shape[0] = -1;
          merged[i++].push_back(
              (members * w.to(members.options()).view(shape)).sum(0, /*keepdim=*/false));
        }
      }
    }
    layer->merge_experts(gs);
    torch::NoGradGuard no_grad;
    size_t i = 0;
    for (const auto& p : bank->named_parameters(/*recurse=*/false)) {
      p.value().copy_(torch::stack(merged[i++]));
    }
  }
}

std::string format_groups(const MergeGroups& groups, const ExpertUsage& usage) {
  std::ostringstream out;
  for (const auto& [block, gs] : groups) {
    const auto it = usage.frequency.find(block);
    out << "block " << block << ":";
    for (const auto& g : gs) {
      out << " [";
      for (size_t i = 0; i < g.size(); ++i) {
        const double f =
            it != usage.frequency.end() ? it->second[g[i]].item<double>() : std::nan("");
        out << (i ? " " : "") << g[i] << " (" << std::fixed << std::setprecision(3) << f << ")";
      }
      out << "]";
    }
    out << "\n";
  }
  return out.str();
}

}  // namespace moeprune::compression
