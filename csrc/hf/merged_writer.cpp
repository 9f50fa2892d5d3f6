// write_merged_checkpoint: a Hugging Face checkpoint folder whose MoE layers' experts were merged
// (M-SMoE), each member written with its group's merged weights, streamed like a pruned one
// (checkpoint_rewrite.h).
#include <moeprune/hf/pruning.h>

#include "hf/checkpoint_rewrite.h"
#include "hf/config.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <vector>

namespace moeprune::hf {

WriteReport write_merged_checkpoint(const Source& source,
                                    const std::map<int64_t, MergedLayer>& merged,
                                    const std::string& out, const std::string& method,
                                    const WriteOptions& options) {
  TORCH_CHECK(!std::filesystem::exists(out), out,
              ": already exists; choose a new output folder (nothing was written)");
  const auto& info = source.info();
  const auto& dir = source.directory();
  std::vector<safetensors::File> files;
  files.reserve(merged.size());
  std::map<std::string, detail::PrunedLayer> layers;
  nlohmann::ordered_json groups_json = nlohmann::ordered_json::object();
  nlohmann::ordered_json states = nlohmann::ordered_json::object();
  for (const auto& [index, m] : merged) {
    TORCH_CHECK(index >= 0 && index < static_cast<int64_t>(info.layers.size()), "MoE layer ", index,
                " was merged; ", dir, " has ", info.layers.size());
    const auto& ref = info.layers[static_cast<size_t>(index)];
    TORCH_CHECK(ref.state.is_plain(), dir, ": ", ref.prefix,
                " is already pruned or merged; merge the original checkpoint");
    TORCH_CHECK(!ref.fused, dir, ": ", ref.prefix,
                " stores its experts fused (transformers 5.x); merged checkpoints are written "
                "in the per-expert layout only");
    const auto& bank = m.state.bank;
    TORCH_CHECK(bank.num_experts == ref.num_experts && !bank.groups.empty() && bank.rank == 0,
                "the merged state of ", ref.prefix, " should merge its ", ref.num_experts,
                " experts into groups");
    detail::PrunedLayer p;
    p.ref = &ref;
    p.front.assign(static_cast<size_t>(ref.num_experts), -1);
    for (const auto& g : bank.groups) {
      for (const auto j : g) {
        TORCH_CHECK(j >= 0 && j < ref.num_experts && p.front[static_cast<size_t>(j)] < 0,
                    "the merge groups of ", ref.prefix, " name expert ", j,
                    " twice or out of range");
        p.front[static_cast<size_t>(j)] = g.front();
      }
    }
    TORCH_CHECK(std::find(p.front.begin(), p.front.end(), -1) == p.front.end(),
                "the merge groups of ", ref.prefix, " leave an expert out");
    files.emplace_back(m.weights);
    p.merged = &files.back();
    groups_json[ref.prefix] = bank.groups;
    states[ref.prefix] = nlohmann::ordered_json::parse(m.state.to_json());
    layers[ref.prefix] = std::move(p);
  }

  auto config = source.config().json();
  // The router keeps its E rows and every member of a group holds the group's merged weights,
  // so transformers computes the merged model as it is; moeprune's loader keeps one copy per
  // group (the layer states).
  nlohmann::ordered_json record;
  record["method"] = method;
  record["router"] = "keep";
  record["source_experts"] = info.num_experts;
  record["merge_groups"] = groups_json;
  record["layer_states"] = states;
  detail::keep_dropped_mlp_layers(config, record);
  config["moeprune"] = record;
  return detail::write_folder(source, layers, /*cut=*/false, out, config.dump(2) + "\n",
                              {{"merge_groups.json", groups_json.dump(2) + "\n"}}, options);
}

}  // namespace moeprune::hf
