#include <moeprune/compression/model_sparsity.h>

#include "compression/pruned_linear.h"

#include <torch/torch.h>

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace moeprune::compression {
namespace model_sparsity_detail {

// What one block holds of what is pruned: its MoE layer (when targeted) and its targeted dense
// layers, grouped by role.
struct Block {
  std::optional<MoELayerEntry> moe;
  std::vector<std::vector<LinearEntry>> groups;

  std::vector<LinearEntry> linears() const {
    std::vector<LinearEntry> out;
    for (const auto& g : groups) out.insert(out.end(), g.begin(), g.end());
    return out;
  }
};

// The roles the view's dense layers have, for a refusal ("attention, dense"; "none").
std::string roles_of(const std::vector<LinearEntry>& linears) {
  std::set<std::string> roles;
  for (const auto& l : linears) roles.insert(to_string(l.role));
  std::string out;
  for (const auto& r : roles) out += (out.empty() ? "" : ", ") + r;
  return out.empty() ? "none" : out;
}

std::map<int64_t, Block> targeted_blocks(const MoEView& view,
                                         const ExpertSparsityOptions& options) {
  const auto& targets = options.targets();
  TORCH_CHECK(targets.experts || targets.beyond_experts(), "sparsify: no targets");
  const auto moe = view.layers();
  const auto linears = targets.beyond_experts() ? view.linears() : std::vector<LinearEntry>{};
  TORCH_CHECK(!targets.experts || !moe.empty() || targets.everything,
              "sparsify: the model has no MoE layers");
  for (const auto role :
       {LinearRole::kAttention, LinearRole::kSharedExpert, LinearRole::kDenseMLP}) {
    if (!targets.wants(role) || targets.everything) continue;
    bool any = false;
    for (const auto& l : linears) any = any || l.role == role;
    TORCH_CHECK(any, "sparsify: the target ", to_string(role),
                " has no linear layers in this model (its dense layers: ", roles_of(linears), ")");
  }
  std::set<int64_t> known;
  for (const auto& e : moe) known.insert(e.key);
  for (const auto& l : view.linears()) known.insert(l.block);
  std::set<int64_t> wanted;
  for (const auto key : options.layers()) {
    TORCH_CHECK(wanted.insert(key).second, "sparsify: block ", key, " is asked for twice");
    TORCH_CHECK(known.count(key) > 0, "sparsify: the model has no MoE layer or dense block keyed ",
                key);
  }
  const auto chosen = [&](int64_t key) { return wanted.empty() || wanted.count(key) > 0; };
  std::map<int64_t, Block> blocks;
  if (targets.experts) {
    for (const auto& e : moe) {
      if (!chosen(e.key)) continue;
      sparsity_detail::check_expert_layer(e);
      blocks[e.key].moe = e;
    }
  }
  std::vector<LinearEntry> targeted;
  for (const auto& l : linears) {
    if (targets.wants(l.role) && chosen(l.block)) targeted.push_back(l);
  }
  for (auto& group : group_linears(targeted)) {
    blocks[group.front().block].groups.push_back(std::move(group));
  }
  return blocks;
}

}  // namespace model_sparsity_detail

SparsityReport sparsify(const MoEView& view, const ExpertSparsityOptions& options,
                        const LayerSparsityCallback& on_layer,
                        const LinearSparsityCallback& on_linears) {
  check_sparsity_options(options);
  const bool needs_data = options.method() != SparsityMethod::kMagnitude;
  TORCH_CHECK(!needs_data || view.has_calibration(), "sparsify: ", to_string(options.method()),
              " needs calibration data and the MoE view has none");
  return sparsity_detail::slim(view, options, {}, on_layer, on_linears);
}

SparsityReport sparsity_detail::slim(const MoEView& view, const ExpertSparsityOptions& options,
                                     const LinearTransform& transform,
                                     const LayerSparsityCallback& on_layer,
                                     const LinearSparsityCallback& on_linears) {
  const auto blocks = model_sparsity_detail::targeted_blocks(view, options);

  SparsityReport report;
  const auto prune_layer = [&](const MoELayerEntry& entry, const LayerCalls* calls) {
    report.layers.push_back(sparsity_detail::slim_moe_layer(entry, calls, options, transform));
    if (on_layer) on_layer(report.layers.back());
  };
  // Prunes a block's dense layers from their statistics (null: no calibration), `at` being the
  // index of the block's first layer in `stats`.
  const auto prune_groups = [&](const model_sparsity_detail::Block& block,
                                const std::vector<InputStatistics>* stats, size_t at) {
    for (const auto& group : block.groups) {
      std::optional<std::vector<InputStatistics>> own;
      if (stats != nullptr) {
        own.emplace(stats->begin() + static_cast<std::ptrdiff_t>(at),
                    stats->begin() + static_cast<std::ptrdiff_t>(at + group.size()));
        at += group.size();
      }
      report.linears.push_back(
          sparsity_detail::slim_linears(group, own ? &*own : nullptr, options, transform));
      if (on_linears) on_linears(report.linears.back());
    }
  };
  const auto visit = [&](const MoELayerEntry& entry, const LayerCalls& calls) {
    prune_layer(entry, &calls);
  };
  if (!view.has_calibration()) {
    for (const auto& [key, block] : blocks) {
      if (block.moe) prune_layer(*block.moe, nullptr);
      prune_groups(block, nullptr, 0);
    }
  } else if (options.sequential()) {
    // One pass per block: its experts and dense layers from the same pass, pruned after it.
    for (const auto& [key, block] : blocks) {
      const auto linears = block.linears();
      std::optional<LinearCalibration> calibration;
      if (!linears.empty()) calibration.emplace(linears);
      view.walk_layers(block.moe ? std::vector<int64_t>{key} : std::vector<int64_t>{},
                       /*with_inputs=*/true, visit);
      if (calibration) {
        const auto stats = calibration->finish();
        prune_groups(block, &stats, 0);
      }
    }
  } else {
    std::vector<int64_t> keys;
    std::vector<LinearEntry> linears;
    for (const auto& [key, block] : blocks) {
      if (block.moe) keys.push_back(key);
      const auto own = block.linears();
      linears.insert(linears.end(), own.begin(), own.end());
    }
    std::optional<LinearCalibration> calibration;
    if (!linears.empty()) calibration.emplace(linears);
    // The dense layers' statistics come from the same pass as the experts' calls; the experts
    // are pruned as the walk visits them, after every pass has run.
    view.walk_layers(keys, /*with_inputs=*/true, visit);
    if (calibration) {
      const auto stats = calibration->finish();
      size_t at = 0;
      for (const auto& [key, block] : blocks) {
        prune_groups(block, &stats, at);
        at += block.linears().size();
      }
    }
  }
  return report;
}

}  // namespace moeprune::compression
