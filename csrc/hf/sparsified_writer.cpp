// write_sparsified_checkpoint: a Hugging Face checkpoint folder whose experts' weights were
// replaced by sparse ones (exact zeros; compression/expert_sparsity.h), streamed like a pruned
// one (checkpoint_rewrite.h). Every tool loads it: the format is the source's, only values change.
#include <moeprune/hf/pruning.h>

#include "hf/checkpoint_rewrite.h"
#include "hf/config.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <vector>

namespace moeprune::hf {

WriteReport write_sparsified_checkpoint(const Source& source,
                                        const std::map<int64_t, std::string>& experts,
                                        const std::string& out, const std::string& record,
                                        const WriteOptions& options) {
  TORCH_CHECK(!std::filesystem::exists(out), out,
              ": already exists; choose a new output folder (nothing was written)");
  const auto& info = source.info();
  const auto& dir = source.directory();
  nlohmann::ordered_json entry;
  try {
    entry = nlohmann::ordered_json::parse(record);
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, "write_sparsified_checkpoint: the record is not JSON: ", e.what());
  }
  TORCH_CHECK(entry.is_object(), "write_sparsified_checkpoint: the record should be a JSON object");
  std::vector<safetensors::File> files;
  files.reserve(experts.size());
  std::map<std::string, detail::PrunedLayer> layers;
  for (const auto& [index, path] : experts) {
    TORCH_CHECK(index >= 0 && index < static_cast<int64_t>(info.layers.size()), "MoE layer ", index,
                " was sparsified; ", dir, " has ", info.layers.size());
    const auto& ref = info.layers[static_cast<size_t>(index)];
    TORCH_CHECK(!ref.fused, dir, ": ", ref.prefix,
                " stores its experts fused (transformers 5.x); sparsified checkpoints are written "
                "in the per-expert layout only");
    detail::PrunedLayer p;
    p.ref = &ref;
    p.front.assign(static_cast<size_t>(ref.num_experts), -1);
    // The layer's state says which experts its bank holds: each held expert (a merged group's
    // first member) stands for its group; the others stay as they are.
    const auto& bank = ref.state.bank;
    if (!bank.groups.empty()) {
      for (const auto& g : bank.groups) {
        for (const auto j : g) p.front[static_cast<size_t>(j)] = g.front();
      }
    } else if (!bank.held.empty()) {
      for (const auto j : bank.held) p.front[static_cast<size_t>(j)] = j;
    } else {
      for (int64_t j = 0; j < ref.num_experts; ++j) p.front[static_cast<size_t>(j)] = j;
    }
    files.emplace_back(path);
    p.merged = &files.back();
    layers[ref.prefix] = std::move(p);
  }
  auto config = source.config().json();
  if (!config.contains("moeprune") || !config["moeprune"].is_object()) {
    config["moeprune"] = nlohmann::ordered_json::object();
  }
  auto& section = config["moeprune"];
  if (!section.contains("sparsity") || !section["sparsity"].is_array()) {
    section["sparsity"] = nlohmann::ordered_json::array();
  }
  section["sparsity"].push_back(entry);
  return detail::write_folder(source, layers, /*cut=*/false, out, config.dump(2) + "\n", {},
                              options);
}

}  // namespace moeprune::hf
