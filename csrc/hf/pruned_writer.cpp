// write_pruned_checkpoint: a Hugging Face checkpoint folder pruned by a plan, streamed tensor by
// tensor from the source files into a temporary folder that is renamed into place at the end
// (checkpoint_rewrite.h).
#include <moeprune/hf/pruning.h>

#include "hf/checkpoint_rewrite.h"
#include "hf/compressed_tensors_quantized.h"
#include "hf/config.h"
#include "hf/family.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

namespace moeprune::hf {
namespace {

using detail::PrunedLayer;

// The plan by layer prefix, checked against the source before anything is written.
std::map<std::string, PrunedLayer> pruned_layers(const ModelInfo& info,
                                                 const pruning::PruningPlan& plan,
                                                 const std::string& source) {
  std::map<std::string, PrunedLayer> out;
  for (const auto& lp : plan.layers) {
    TORCH_CHECK(lp.key >= 0 && lp.key < static_cast<int64_t>(info.layers.size()),
                "the plan prunes MoE layer ", lp.key, "; ", source, " has ", info.layers.size());
    const auto& ref = info.layers[static_cast<size_t>(lp.key)];
    TORCH_CHECK(lp.num_experts == ref.num_experts, "the plan was made for ", lp.num_experts,
                " experts in ", ref.prefix, "; ", source, " has ", ref.num_experts);
    TORCH_CHECK(ref.state.is_plain(), source, " was already pruned with the router kept (",
                ref.prefix, "); prune the original checkpoint instead");
    for (auto id : lp.pruned) {
      TORCH_CHECK(id >= 0 && id < ref.num_experts, "the plan prunes expert ", id, " of ",
                  ref.prefix, ", which has ", ref.num_experts);
    }
    TORCH_CHECK(ref.num_experts - static_cast<int64_t>(lp.pruned.size()) >= info.top_k,
                "the plan leaves ", ref.prefix, " fewer than k = ", info.top_k, " experts");
    if (info.group_routing && info.group_routing->num_groups() > 1) {
      // The router splits its experts into n_group equal contiguous groups: every group must
      // lose the same number, or experts would change groups.
      const int64_t G = info.group_routing->num_groups(), per_group = ref.num_experts / G;
      std::vector<int64_t> gone(static_cast<size_t>(G), 0);
      for (auto id : lp.pruned) ++gone[static_cast<size_t>(id / per_group)];
      for (int64_t g = 0; g < G; ++g) {
        TORCH_CHECK(gone[static_cast<size_t>(g)] == gone[0], "the plan prunes ",
                    gone[static_cast<size_t>(g)], " experts from group ", g, " of ", ref.prefix,
                    " and ", gone[0], " from group 0; its group-limited router (n_group = ", G,
                    ") needs equal groups");
      }
    }
    if (lp.pruned.empty()) {
      continue;
    }
    PrunedLayer p;
    p.ref = &ref;
    p.gone = lp.pruned;
    std::sort(p.gone.begin(), p.gone.end());
    for (int64_t j = 0; j < ref.num_experts; ++j) {
      if (!std::binary_search(p.gone.begin(), p.gone.end(), j)) {
        p.kept.push_back(j);
      }
    }
    out[ref.prefix] = std::move(p);
  }
  return out;
}

// A pack-quantized source cut: its quantization_config names the modules left dense (ignore)
// by their old expert numbers, so each renumbered expert must stay on the side it was.
void check_packed_renumbering(const Source& source,
                              const std::map<std::string, PrunedLayer>& pruned) {
  const auto groups = detail::pack_quantized_groups(source.config());
  if (groups.empty()) return;
  const auto& checkpoint = source.checkpoint();
  for (const auto& [prefix, layer] : pruned) {
    const auto& ref = *layer.ref;
    const auto& family = family_of(ref.model_type);
    const auto stem = family.expert_stem(ref);
    for (size_t at = 0; at < layer.kept.size(); ++at) {
      const auto j = layer.kept[at];
      for (const auto& name : family.expert_tensors(ref, j)) {
        const auto module = detail::weight_module(name);
        if (module.empty()) continue;
        const bool packed = checkpoint.is_decoded(name);
        const auto renamed =
            stem + std::to_string(at) + module.substr(stem.size() + std::to_string(j).size());
        bool targeted = false;
        for (const auto& g : groups) targeted = targeted || detail::targets_module(g, renamed);
        TORCH_CHECK(packed == targeted, source.directory(), ": cutting experts renumbers ", module,
                    " to ", renamed, ", which its quantization_config ",
                    targeted ? "expects pack-quantized" : "leaves dense", " while it is stored ",
                    packed ? "packed" : "dense",
                    "; prune before quantising, or keep the router rows of the dense source");
      }
    }
  }
}

// The expert count config.json gets: a cut checkpoint must lose the same number everywhere.
int64_t new_expert_count(const ModelInfo& info, const std::map<std::string, PrunedLayer>& pruned,
                         bool cut) {
  if (!cut || pruned.empty()) {
    return info.num_experts;
  }
  std::set<size_t> counts;
  for (const auto& ref : info.layers) {
    const auto it = pruned.find(ref.prefix);
    counts.insert(it == pruned.end() ? 0 : it->second.gone.size());
  }
  TORCH_CHECK(counts.size() == 1,
              "cutting router rows needs the same number of experts pruned in every MoE layer "
              "(config.json holds one expert count, so transformers could not load the result); "
              "prune every layer alike, or keep the router rows (--router keep)");
  return info.num_experts - static_cast<int64_t>(*counts.begin());
}

// config.json with the new expert count and a "moeprune" section saying what was done; for a
// "keep" checkpoint, each pruned layer's MoELayerState, which moeprune's loader restores.
std::string pruned_config(const Source& source, const ModelInfo& info,
                          const pruning::PruningPlan& plan,
                          const std::map<std::string, PrunedLayer>& pruned, bool cut,
                          int64_t new_experts) {
  auto config = source.config().json();
  config[info.experts_key()] = new_experts;
  if (cut) {
    family_of(info.model_type, source.config().path()).write_cut_config(config);
  }
  nlohmann::ordered_json record;
  record["criterion"] = plan.criterion;
  record["router"] = cut ? "cut" : "keep";
  record["source_experts"] = info.num_experts;
  nlohmann::ordered_json by_layer = nlohmann::ordered_json::object();
  nlohmann::ordered_json states = nlohmann::ordered_json::object();
  for (const auto& [prefix, layer] : pruned) {
    by_layer[prefix] = layer.gone;
    MoELayerState state;
    state.bank.num_experts = layer.ref->num_experts;
    state.bank.held = layer.kept;
    states[prefix] = nlohmann::ordered_json::parse(state.to_json());
  }
  record["pruned_experts"] = by_layer;
  if (!cut) {
    record["layer_states"] = states;
  }
  detail::keep_dropped_mlp_layers(config, record);
  detail::keep_slimming_records(config, record);
  config["moeprune"] = record;
  return config.dump(2) + "\n";
}

}  // namespace

WriteReport write_pruned_checkpoint(const Source& source, const pruning::PruningPlan& plan,
                                    const std::string& out, const WriteOptions& options) {
  TORCH_CHECK(!std::filesystem::exists(out), out,
              ": already exists; choose a new output folder (nothing was written)");
  const auto& info = source.info();
  const bool cut = options.router == RouterRows::kCut;
  const auto pruned = pruned_layers(info, plan, source.directory());
  // An encoded source (compressed-tensors) is cut by its stored parts: the router rows are cut
  // from a dense router only.
  const auto& checkpoint = source.checkpoint();
  for (const auto& [prefix, layer] : pruned) {
    for (const auto& name : {layer.ref->router, layer.ref->router_bias}) {
      TORCH_CHECK(name.empty() || !checkpoint.is_decoded(name), source.directory(), ": ", name,
                  " (a router) is stored encoded; moeprune cuts router rows from dense routers "
                  "only");
    }
  }
  const auto new_experts = new_expert_count(info, pruned, cut);
  if (cut) check_packed_renumbering(source, pruned);
  return detail::write_folder(source, pruned, cut, out,
                              pruned_config(source, info, plan, pruned, cut, new_experts),
                              {{"pruning_plan.json", plan.to_json() + "\n"}}, options);
}

}  // namespace moeprune::hf
