// write_pruned_checkpoint and write_merged_checkpoint: a Hugging Face checkpoint folder pruned by
// a plan, or with merged experts, streamed tensor by tensor from the source files (and the merged
// weights' file) into a temporary folder that is renamed into place at the end.
#include <moeprune/hf/pruning.h>

#include "hf/family.h"
#include "io/posix_file.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>

namespace moeprune::hf {
namespace {

// What the plan does to one MoE layer of the source.
struct PrunedLayer {
  const MoELayerRef* ref = nullptr;
  std::vector<int64_t> gone;  // pruned expert ids, increasing
  std::vector<int64_t> kept;  // the others, increasing
  // Merged instead of pruned: expert j is written with the weights of its group's first expert
  // front[j] as the file `merged` holds them.
  const safetensors::File* merged = nullptr;
  std::vector<int64_t> front;
};

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

// What the output holds for one source tensor.
struct TensorPlan {
  std::string out_name;                        // empty: dropped
  bool zero = false;                           // some rows (or all) written as zeros
  bool merged = false;                         // a merged expert's weights
  std::vector<safetensors::ByteRange> ranges;  // empty: copied whole
  std::vector<int64_t> shape;
};

// Byte ranges of rows `rows` of a tensor whose first dimension is E (contiguous runs merged);
// `zero_rows` (sorted) are written as zeros in place instead.
std::vector<safetensors::ByteRange> row_ranges(const safetensors::File& f,
                                               const safetensors::TensorInfo& ti,
                                               const std::vector<int64_t>& rows,
                                               const std::vector<int64_t>& zero_rows) {
  const uint64_t row_bytes = ti.nbytes() / static_cast<uint64_t>(ti.shape[0]);
  std::vector<safetensors::ByteRange> ranges;
  for (auto r : rows) {
    const bool zero = std::binary_search(zero_rows.begin(), zero_rows.end(), r);
    const int fd = zero ? -1 : f.fd();
    const uint64_t at =
        zero ? 0 : f.data_offset() + ti.begin + static_cast<uint64_t>(r) * row_bytes;
    if (!ranges.empty() && ranges.back().fd == fd &&
        (zero || ranges.back().offset + ranges.back().length == at)) {
      ranges.back().length += row_bytes;
    } else {
      ranges.push_back({fd, at, row_bytes});
    }
  }
  return ranges;
}

// A tensor of a pruned layer: router rows and fused slabs lose (cut) or zero (keep) the pruned
// experts' rows; per-expert tensors of pruned experts are dropped (cut) or zeroed (keep), and the
// survivors renumbered (cut).
TensorPlan plan_layer_tensor(const std::string& name, const safetensors::File& f,
                             const PrunedLayer& layer, bool cut) {
  const auto& ti = f.info(name);
  const auto& ref = *layer.ref;
  const auto& family = family_of(ref.model_type);
  TensorPlan p;
  p.out_name = name;
  p.shape = ti.shape;
  const auto stem = family.expert_stem(ref);
  if (layer.merged != nullptr) {
    if (name.compare(0, stem.size(), stem) != 0) {
      return p;  // the router and the layer's other tensors are copied
    }
    const auto rest = name.substr(stem.size());
    const int64_t j = std::stoll(rest.substr(0, rest.find('.')));
    const auto own = family.expert_tensors(ref, j);
    const auto at = std::find(own.begin(), own.end(), name) - own.begin();
    TORCH_CHECK(at < static_cast<std::ptrdiff_t>(own.size()), name,
                " is not one of the expert tensors moeprune knows for ", ref.prefix);
    const auto from =
        family.expert_tensors(ref, layer.front[static_cast<size_t>(j)])[static_cast<size_t>(at)];
    const auto& f_merged = *layer.merged;
    TORCH_CHECK(f_merged.contains(from), f_merged.path(), ": the merged weights lack ", from);
    const auto& mi = f_merged.info(from);
    TORCH_CHECK(mi.shape == ti.shape && mi.scalar_type == ti.scalar_type, f_merged.path(), ": ",
                from, " is ", mi.scalar_type, " ", mi.shape, ", the checkpoint's ", name, " is ",
                ti.scalar_type, " ", ti.shape);
    p.ranges = {{f_merged.fd(), f_merged.data_offset() + mi.begin, mi.nbytes()}};
    p.merged = true;
    return p;
  }
  const auto fused = ref.fused ? family.expert_tensors(ref, 0) : std::vector<std::string>{};
  if (name == ref.router || (!ref.router_bias.empty() && name == ref.router_bias) ||
      std::find(fused.begin(), fused.end(), name) != fused.end()) {
    // [E, ...]: router rows (and the router's bias), or the fused experts' slabs.
    if (cut) {
      p.ranges = row_ranges(f, ti, layer.kept, {});
      p.shape[0] = static_cast<int64_t>(layer.kept.size());
    } else if (name != ref.router && name != ref.router_bias) {
      std::vector<int64_t> all(static_cast<size_t>(ref.num_experts));
      std::iota(all.begin(), all.end(), 0);
      p.ranges = row_ranges(f, ti, all, layer.gone);  // pruned experts' slabs become zeros
      p.zero = true;
    }
    return p;
  }
  if (ref.fused || name.compare(0, stem.size(), stem) != 0) {
    return p;  // the layer's other tensors are copied
  }
  const auto rest = name.substr(stem.size());
  const auto dot = rest.find('.');
  const int64_t j = std::stoll(rest.substr(0, dot));
  if (std::binary_search(layer.gone.begin(), layer.gone.end(), j)) {
    if (cut) {
      p.out_name.clear();
    } else {
      p.ranges = {{-1, 0, ti.nbytes()}};
      p.zero = true;
    }
  } else if (cut) {
    const auto new_j =
        std::lower_bound(layer.kept.begin(), layer.kept.end(), j) - layer.kept.begin();
    p.out_name = stem + std::to_string(new_j) + rest.substr(dot);
  }
  return p;
}

TensorPlan plan_tensor(const std::string& name, const safetensors::File& f,
                       const std::map<std::string, PrunedLayer>& pruned, bool cut) {
  for (const auto& [prefix, layer] : pruned) {
    if (name.compare(0, prefix.size() + 1, prefix + ".") == 0) {
      return plan_layer_tensor(name, f, layer, cut);
    }
  }
  TensorPlan p;
  p.out_name = name;
  p.shape = f.info(name).shape;
  return p;
}

// Every shard under the same name in `dir`; returns the index's weight map and data bytes.
nlohmann::ordered_json write_shards(const safetensors::Checkpoint& checkpoint,
                                    const std::map<std::string, PrunedLayer>& pruned, bool cut,
                                    const std::string& dir, const WriteOptions& options,
                                    WriteReport& report, uint64_t& data_bytes) {
  uint64_t total = 0;
  for (const auto& shard : checkpoint.shard_files()) {
    total += checkpoint.file(shard).file_size();
  }
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (const auto& shard : checkpoint.shard_files()) {
    const auto& f = checkpoint.file(shard);
    safetensors::Writer writer(dir + "/" + shard);
    writer.set_metadata(f.metadata());
    bool any = false;
    for (const auto& name : f.names()) {
      if (checkpoint.sharded() && checkpoint.shard_of(name) != shard) {
        continue;  // not listed for this shard in the index: not part of the model
      }
      const auto p = plan_tensor(name, f, pruned, cut);
      if (p.out_name.empty()) {
        ++report.tensors_dropped;
        continue;
      }
      const auto& ti = f.info(name);
      if (!p.ranges.empty()) {
        writer.add_ranges(p.out_name, ti.scalar_type, p.shape, p.ranges);
        ++(p.zero     ? report.tensors_zeroed
           : p.merged ? report.tensors_merged
                      : report.tensors_sliced);
      } else {
        writer.add_copy(p.out_name, f, name);
        ++report.tensors_copied;
      }
      weight_map[p.out_name] = shard;
      any = true;
    }
    if (any || !checkpoint.sharded()) {
      data_bytes += writer.data_bytes();
      report.bytes_written += writer.finish();
    }
    for (const auto& name : f.names()) {
      f.release(name);
    }
    if (options.progress) {
      options.progress(report.bytes_written, total);
    }
  }
  return weight_map;
}

// A Layer-Dropped source (lm::save_causal_lm): its zero MoE blocks stay dropped on reload.
void keep_dropped_mlp_layers(const nlohmann::ordered_json& config, nlohmann::ordered_json& record) {
  if (config.contains("moeprune") && config["moeprune"].is_object() &&
      config["moeprune"].contains("dropped_mlp_layers")) {
    record["dropped_mlp_layers"] = config["moeprune"]["dropped_mlp_layers"];
  }
}

// config.json with the new expert count and a "moeprune" section saying what was done; for a
// "keep" checkpoint, each pruned layer's MoELayerState, which moeprune's loader restores.
std::string pruned_config(const std::string& source, const ModelInfo& info,
                          const pruning::PruningPlan& plan,
                          const std::map<std::string, PrunedLayer>& pruned, bool cut,
                          int64_t new_experts) {
  std::ifstream config_in(source + "/config.json");
  auto config = nlohmann::ordered_json::parse(config_in);
  config[info.experts_key()] = new_experts;
  // A group-limited router keeps its weights as they are (sigmoid scores do not depend on the
  // other experts; transformers' DeepSeek-V2 softmax renormalises over the survivors by itself).
  if (cut && info.model_type != "mixtral" && info.model_type != "switch_transformers" &&
      !info.group_routing) {
    // moeprune renormalises the top-k weights over the surviving experts once router rows are
    // cut; transformers does so for these families only with norm_topk_prob.
    config["norm_topk_prob"] = true;
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
  keep_dropped_mlp_layers(config, record);
  config["moeprune"] = record;
  return config.dump(2) + "\n";
}

// Writes the folder: shards, index, `config_text`, `extra` files, the source's other files.
WriteReport write_folder(const safetensors::Checkpoint& checkpoint, const std::string& source,
                         const std::map<std::string, PrunedLayer>& layers, bool cut,
                         const std::string& out, const std::string& config_text,
                         const std::map<std::string, std::string>& extra,
                         const WriteOptions& options) {
  io::AtomicFolder folder(out);
  const auto& dir = folder.path();
  WriteReport report;
  uint64_t data_bytes = 0;
  const auto weight_map = write_shards(checkpoint, layers, cut, dir, options, report, data_bytes);
  if (checkpoint.sharded()) {
    nlohmann::ordered_json index;
    index["metadata"] = nlohmann::ordered_json::parse(checkpoint.index_metadata());
    index["metadata"]["total_size"] = data_bytes;
    index["weight_map"] = weight_map;
    io::write_text_file(dir + "/model.safetensors.index.json", index.dump(2) + "\n");
  }
  io::write_text_file(dir + "/config.json", config_text);
  for (const auto& [name, text] : extra) {
    io::write_text_file(dir + "/" + name, text);
  }

  // The folder's other files (tokenizer, generation config...), byte for byte.
  const std::set<std::string> shards(checkpoint.shard_files().begin(),
                                     checkpoint.shard_files().end());
  for (const auto& name : io::list_folder(source)) {
    if (shards.count(name) || name == "config.json" || name == "model.safetensors.index.json" ||
        extra.count(name) || name == "pruning_plan.json" || name == "merge_groups.json") {
      continue;
    }
    const auto from = source + "/" + name;
    struct stat st {};
    if (::stat(from.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      io::copy_file(from, dir + "/" + name);
    }
  }
  folder.commit();
  return report;
}

}  // namespace

WriteReport write_pruned_checkpoint(const std::string& source, const pruning::PruningPlan& plan,
                                    const std::string& out, const WriteOptions& options) {
  TORCH_CHECK(!std::filesystem::exists(out), out,
              ": already exists; choose a new output folder (nothing was written)");
  safetensors::Checkpoint checkpoint(source);
  const auto info = describe(source, checkpoint);
  const bool cut = options.router == RouterRows::kCut;
  const auto pruned = pruned_layers(info, plan, source);
  const auto new_experts = new_expert_count(info, pruned, cut);
  return write_folder(checkpoint, source, pruned, cut, out,
                      pruned_config(source, info, plan, pruned, cut, new_experts),
                      {{"pruning_plan.json", plan.to_json() + "\n"}}, options);
}

WriteReport write_merged_checkpoint(const std::string& source,
                                    const std::map<int64_t, MergedLayer>& merged,
                                    const std::string& out, const std::string& method,
                                    const WriteOptions& options) {
  TORCH_CHECK(!std::filesystem::exists(out), out,
              ": already exists; choose a new output folder (nothing was written)");
  safetensors::Checkpoint checkpoint(source);
  const auto info = describe(source, checkpoint);
  std::vector<safetensors::File> files;
  files.reserve(merged.size());
  std::map<std::string, PrunedLayer> layers;
  nlohmann::ordered_json groups_json = nlohmann::ordered_json::object();
  nlohmann::ordered_json states = nlohmann::ordered_json::object();
  for (const auto& [index, m] : merged) {
    TORCH_CHECK(index >= 0 && index < static_cast<int64_t>(info.layers.size()), "MoE layer ", index,
                " was merged; ", source, " has ", info.layers.size());
    const auto& ref = info.layers[static_cast<size_t>(index)];
    TORCH_CHECK(ref.state.is_plain(), source, ": ", ref.prefix,
                " is already pruned or merged; merge the original checkpoint");
    TORCH_CHECK(!ref.fused, source, ": ", ref.prefix,
                " stores its experts fused (transformers 5.x); merged checkpoints are written "
                "in the per-expert layout only");
    const auto& bank = m.state.bank;
    TORCH_CHECK(bank.num_experts == ref.num_experts && !bank.groups.empty() && bank.rank == 0,
                "the merged state of ", ref.prefix, " should merge its ", ref.num_experts,
                " experts into groups");
    PrunedLayer p;
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

  std::ifstream config_in(source + "/config.json");
  auto config = nlohmann::ordered_json::parse(config_in);
  // The router keeps its E rows and every member of a group holds the group's merged weights,
  // so transformers computes the merged model as it is; moeprune's loader keeps one copy per
  // group (the layer states).
  nlohmann::ordered_json record;
  record["method"] = method;
  record["router"] = "keep";
  record["source_experts"] = info.num_experts;
  record["merge_groups"] = groups_json;
  record["layer_states"] = states;
  keep_dropped_mlp_layers(config, record);
  config["moeprune"] = record;
  return write_folder(checkpoint, source, layers, /*cut=*/false, out, config.dump(2) + "\n",
                      {{"merge_groups.json", groups_json.dump(2) + "\n"}}, options);
}

}  // namespace moeprune::hf
