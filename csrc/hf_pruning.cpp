#include <moeprune/hf_pruning.h>

#include "file_copy.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <stdexcept>

namespace moeprune::hf {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void fail(const std::string& message) {
  throw std::runtime_error(message);
}

// Removes a folder of plain files (our temporary output), without std::filesystem::remove_all:
// libtorch exports its own std::filesystem symbols, and the two disagree about directory
// iteration.
void remove_flat_dir(const std::string& dir) {
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") {
        ::unlink((dir + "/" + name).c_str());
      }
    }
    ::closedir(d);
  }
  ::rmdir(dir.c_str());
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    fail(dir + ": cannot list: " + std::strerror(errno));
  }
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") {
      names.push_back(name);
    }
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

void write_text_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  if (!out) {
    fail(path + ": write failed");
  }
}

// Copies a whole file in the kernel, so the bytes never pass through this process, and syncs it
// before the output folder is renamed into place.
void copy_file(const std::string& from, const std::string& to) {
  const int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) {
    fail(from + ": cannot open: " + std::strerror(errno));
  }
  struct stat st {};
  ::fstat(in, &st);
  const int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (out < 0) {
    ::close(in);
    fail(to + ": cannot create: " + std::strerror(errno));
  }
  try {
    safetensors::detail::SequentialOutput output(out, to);
    output.copy({in, 0, static_cast<uint64_t>(st.st_size)});
    output.sync();
  } catch (...) {
    ::close(in);
    ::close(out);
    throw;
  }
  ::close(in);
  if (::close(out) != 0) {
    fail(to + ": close failed");
  }
}

}  // namespace

pruning::ExpertScores score_checkpoint(const ScoreOptions& options,
                                       const pruning::CriterionRegistry& registry) {
  const auto criterion = registry.create(options.criterion);
  TORCH_CHECK(!options.finetuned.empty(), criterion->name(), ": --finetuned is required");
  safetensors::Checkpoint finetuned(options.finetuned);
  const auto info = describe(options.finetuned, finetuned);
  std::unique_ptr<safetensors::Checkpoint> pretrained;
  ModelInfo pre_info;
  if (criterion->needs_pretrained()) {
    TORCH_CHECK(!options.pretrained.empty(), criterion->name(),
                " compares with the pre-trained model: give --pretrained");
    pretrained = std::make_unique<safetensors::Checkpoint>(options.pretrained);
    pre_info = describe(options.pretrained, *pretrained);
    TORCH_CHECK(pre_info.layers.size() == info.layers.size(), options.pretrained, " has ",
                pre_info.layers.size(), " MoE layers, ", options.finetuned, " has ",
                info.layers.size());
  }
  std::unique_ptr<safetensors::File> calibration;
  if (criterion->needs_data()) {
    TORCH_CHECK(!options.calibration.empty(), criterion->name(),
                " needs calibration data: give --calibration, a safetensors file with each MoE "
                "layer's input hidden states under the layer's name (see docs/checkpoints.md)");
    calibration = std::make_unique<safetensors::File>(options.calibration);
  }
  const auto load = LoadOptions().expert_weights(criterion->needs_expert_weights());
  pruning::ExpertScores scores;
  const auto total = static_cast<int64_t>(info.layers.size());
  for (const auto& ref : info.layers) {
    // One layer at a time, so memory holds at most one layer (two with --pretrained).
    pruning::CriterionContext context;
    context.seed = options.seed;
    context.finetuned_layers.emplace(ref.index, load_moe_layer(finetuned, info, ref, load));
    if (pretrained) {
      const auto& pre_ref = pre_info.layers[static_cast<size_t>(ref.index)];
      // Matched by position: the two may use different layouts (hub vs. fused Mixtral).
      TORCH_CHECK(pre_ref.num_experts == ref.num_experts, "MoE layer ", ref.index, " has ",
                  pre_ref.num_experts, " experts in ", options.pretrained, " (", pre_ref.prefix,
                  ") and ", ref.num_experts, " in ", options.finetuned, " (", ref.prefix, ")");
      context.pretrained_layers.emplace(ref.index,
                                        load_moe_layer(*pretrained, pre_info, pre_ref, load));
    }
    if (calibration) {
      TORCH_CHECK(calibration->contains(ref.prefix), options.calibration,
                  ": no hidden states for MoE layer '", ref.prefix, "'");
      const auto& ci = calibration->info(ref.prefix);
      TORCH_CHECK(!ci.shape.empty() && ci.shape.back() == info.d_model, options.calibration,
                  ": tensor '", ref.prefix, "' has last dimension ",
                  ci.shape.empty() ? 0 : ci.shape.back(), ", the model's hidden size is ",
                  info.d_model);
      const auto* file = calibration.get();
      const auto index = ref.index;
      const auto prefix = ref.prefix;
      context.layer_data = [file, index, prefix](const auto& visit) {
        visit(index, file->tensor(prefix).to(torch::kFloat));
      };
    }
    auto layer_scores = pruning::score_experts(*criterion, context);
    scores[ref.index] = layer_scores.at(ref.index);
    if (options.progress) {
      options.progress(ref.index + 1, total);
    }
  }
  return scores;
}

pruning::PruningPlan plan_same_count(const ModelInfo& info, const pruning::ExpertScores& scores,
                                     int64_t n, const std::vector<std::string>& layers,
                                     const std::string& criterion) {
  TORCH_CHECK(n >= 0, "experts per layer must be >= 0, got ", n);
  std::set<int64_t> chosen;
  for (const auto& name : layers) {
    chosen.insert(info.layer(name).index);
  }
  pruning::PruningPlan plan;
  plan.criterion = criterion;
  nlohmann::json signature = {{"hf_model_type", info.model_type},
                              {"d_model", info.d_model},
                              {"num_experts", info.num_experts}};
  for (const auto& ref : info.layers) {
    signature["moe_layers"].push_back(ref.prefix);
  }
  plan.model_signature = signature.dump();
  for (const auto& ref : info.layers) {
    if (!chosen.empty() && chosen.count(ref.index) == 0) {
      continue;
    }
    const auto it = scores.find(ref.index);
    TORCH_CHECK(it != scores.end(), "no scores for MoE layer ", ref.prefix);
    const auto s = it->second.to(torch::kDouble).contiguous();
    const int64_t E = s.size(0);
    TORCH_CHECK(E - n >= info.top_k, "pruning ", n, " of the ", E, " experts of ", ref.prefix,
                " leaves fewer than the ", info.top_k, " each token chooses");
    pruning::LayerPlan lp;
    lp.block = ref.index;
    lp.num_experts = E;
    lp.scores.assign(s.data_ptr<double>(), s.data_ptr<double>() + E);
    std::vector<int64_t> order(static_cast<size_t>(E));
    std::iota(order.begin(), order.end(), 0);
    // Lowest score first; ties to the lower expert id, so plans are reproducible.
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return lp.scores[a] < lp.scores[b]; });
    lp.pruned.assign(order.begin(), order.begin() + n);
    std::sort(lp.pruned.begin(), lp.pruned.end());
    plan.layers.push_back(std::move(lp));
  }
  return plan;
}

WriteReport write_pruned_checkpoint(const std::string& source, const pruning::PruningPlan& plan,
                                    const std::string& out, const WriteOptions& options) {
  if (fs::exists(out)) {
    fail(out + ": already exists; choose a new output folder (nothing was written)");
  }
  safetensors::Checkpoint checkpoint(source);
  const auto info = describe(source, checkpoint);
  const bool cut = options.router == RouterRows::kCut;

  // The plan, by layer prefix; checked against the model before anything is written.
  std::map<std::string, std::vector<int64_t>> pruned;  // prefix -> pruned ids
  std::map<std::string, const MoELayerRef*> refs;
  for (const auto& lp : plan.layers) {
    TORCH_CHECK(lp.block >= 0 && lp.block < static_cast<int64_t>(info.layers.size()),
                "the plan prunes MoE layer ", lp.block, "; ", source, " has ", info.layers.size());
    const auto& ref = info.layers[static_cast<size_t>(lp.block)];
    TORCH_CHECK(lp.num_experts == ref.num_experts, "the plan was made for ", lp.num_experts,
                " experts in ", ref.prefix, "; ", source, " has ", ref.num_experts);
    TORCH_CHECK(ref.zeroed_experts.empty(), source, " was already pruned with the router kept (",
                ref.prefix, "); prune the original checkpoint instead");
    for (auto id : lp.pruned) {
      TORCH_CHECK(id >= 0 && id < ref.num_experts, "the plan prunes expert ", id, " of ",
                  ref.prefix, ", which has ", ref.num_experts);
    }
    TORCH_CHECK(ref.num_experts - static_cast<int64_t>(lp.pruned.size()) >= info.top_k,
                "the plan leaves ", ref.prefix, " fewer than k = ", info.top_k, " experts");
    if (!lp.pruned.empty()) {
      pruned[ref.prefix] = lp.pruned;
      refs[ref.prefix] = &ref;
    }
  }
  int64_t new_experts = info.num_experts;
  if (cut && !pruned.empty()) {
    std::set<size_t> counts;
    for (const auto& ref : info.layers) {
      counts.insert(pruned.count(ref.prefix) ? pruned[ref.prefix].size() : 0);
    }
    TORCH_CHECK(counts.size() == 1,
                "cutting router rows needs the same number of experts pruned in every MoE layer "
                "(config.json holds one expert count, so transformers could not load the result); "
                "prune every layer alike, or keep the router rows (--router keep)");
    new_experts = info.num_experts - static_cast<int64_t>(*counts.begin());
  }

  // Maps a source tensor name of a pruned layer to what the output holds.
  struct Plan {
    std::string out_name;  // empty: dropped
    bool zero = false;
    std::vector<safetensors::ByteRange> ranges;
    std::vector<int64_t> shape;
  };
  auto kept_of = [](const std::vector<int64_t>& gone, int64_t E) {
    std::vector<int64_t> kept;
    for (int64_t j = 0; j < E; ++j) {
      if (!std::binary_search(gone.begin(), gone.end(), j)) {
        kept.push_back(j);
      }
    }
    return kept;
  };
  // Byte ranges of rows `rows` of a tensor whose first dimension is E (contiguous runs merged).
  // `zero_rows` (sorted) are written as zeros in place instead.
  auto row_ranges = [](const safetensors::File& f, const safetensors::TensorInfo& ti,
                       const std::vector<int64_t>& rows, const std::vector<int64_t>& zero_rows) {
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
  };
  auto plan_tensor = [&](const std::string& name, const safetensors::File& f) -> Plan {
    const auto& ti = f.info(name);
    Plan p;
    p.out_name = name;
    p.shape = ti.shape;
    for (const auto& [prefix, gone] : pruned) {
      if (name.compare(0, prefix.size() + 1, prefix + ".") != 0) {
        continue;
      }
      const auto& ref = *refs.at(prefix);
      const auto kept = kept_of(gone, ref.num_experts);
      if (name == ref.router ||
          (ref.fused && (name == ref.expert_tensors(0)[0] || name == ref.expert_tensors(0)[1]))) {
        // [E, ...]: router rows, or the fused experts' slabs.
        if (cut) {
          p.ranges = row_ranges(f, ti, kept, {});
          p.shape[0] = static_cast<int64_t>(kept.size());
        } else if (name != ref.router) {
          std::vector<int64_t> all(static_cast<size_t>(ref.num_experts));
          std::iota(all.begin(), all.end(), 0);
          p.ranges = row_ranges(f, ti, all, gone);  // pruned experts' slabs become zeros
          p.zero = true;
        }
        return p;
      }
      if (ref.fused) {
        return p;
      }
      // Per-expert tensors: "<prefix>.experts.<j>." or "<prefix>.experts.expert_<j>.".
      const std::string stem =
          prefix + ".experts." +
          (ref.architecture == Architecture::kSwitchTransformers ? "expert_" : "");
      if (name.compare(0, stem.size(), stem) != 0) {
        return p;
      }
      const auto rest = name.substr(stem.size());
      const auto dot = rest.find('.');
      const int64_t j = std::stoll(rest.substr(0, dot));
      if (std::binary_search(gone.begin(), gone.end(), j)) {
        if (cut) {
          p.out_name.clear();
        } else {
          p.ranges = {{-1, 0, ti.nbytes()}};
          p.zero = true;
        }
      } else if (cut) {
        const auto new_j = std::lower_bound(kept.begin(), kept.end(), j) - kept.begin();
        p.out_name = stem + std::to_string(new_j) + rest.substr(dot);
      }
      return p;
    }
    return p;
  };

  const fs::path out_path(out);
  const auto parent = out_path.parent_path().empty() ? fs::path(".") : out_path.parent_path();
  TORCH_CHECK(fs::is_directory(parent), out, ": the parent folder does not exist");
  std::random_device rd;
  const std::string tmp = (parent / ("." + out_path.filename().string() + ".tmp-" +
                                     std::to_string(::getpid()) + "-" + std::to_string(rd())))
                              .string();
  if (::mkdir(tmp.c_str(), 0755) != 0) {
    fail(tmp + ": cannot create: " + std::strerror(errno));
  }
  WriteReport report;
  try {
    uint64_t total = 0;
    for (const auto& shard : checkpoint.shard_files()) {
      total += checkpoint.file(shard).file_size();
    }
    nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
    uint64_t total_data = 0;
    std::vector<std::string> written_shards;
    for (const auto& shard : checkpoint.shard_files()) {
      const auto& f = checkpoint.file(shard);
      safetensors::Writer writer((tmp + "/" + shard));
      writer.set_metadata(f.metadata());
      bool any = false;
      for (const auto& name : f.names()) {
        if (checkpoint.sharded() && checkpoint.shard_of(name) != shard) {
          continue;  // not listed for this shard in the index: not part of the model
        }
        auto p = plan_tensor(name, f);
        if (p.out_name.empty()) {
          ++report.tensors_dropped;
          continue;
        }
        const auto& ti = f.info(name);
        if (p.zero) {
          writer.add_ranges(p.out_name, ti.scalar_type, p.shape, p.ranges);
          ++report.tensors_zeroed;
        } else if (!p.ranges.empty()) {
          writer.add_ranges(p.out_name, ti.scalar_type, p.shape, p.ranges);
          ++report.tensors_sliced;
        } else {
          writer.add_copy(p.out_name, f, name);
          ++report.tensors_copied;
        }
        weight_map[p.out_name] = shard;
        any = true;
      }
      if (any || !checkpoint.sharded()) {
        total_data += writer.data_bytes();
        report.bytes_written += writer.finish();
        written_shards.push_back(shard);
      }
      for (const auto& name : f.names()) {
        f.release(name);
      }
      if (options.progress) {
        options.progress(report.bytes_written, total);
      }
    }
    if (checkpoint.sharded()) {
      nlohmann::ordered_json index;
      index["metadata"] = nlohmann::ordered_json::parse(checkpoint.index_metadata());
      index["metadata"]["total_size"] = total_data;
      index["weight_map"] = weight_map;
      write_text_file((tmp + "/" + "model.safetensors.index.json"), index.dump(2) + "\n");
    }

    // config.json: the new expert count and what was done.
    std::ifstream config_in(source + "/config.json");
    auto config = nlohmann::ordered_json::parse(config_in);
    config[info.experts_key()] = new_experts;
    nlohmann::ordered_json record;
    record["criterion"] = plan.criterion;
    record["router"] = cut ? "cut" : "keep";
    record["source_experts"] = info.num_experts;
    nlohmann::ordered_json by_layer = nlohmann::ordered_json::object();
    for (const auto& [prefix, gone] : pruned) {
      by_layer[prefix] = gone;
    }
    record["pruned_experts"] = by_layer;
    config["moeprune"] = record;
    write_text_file((tmp + "/" + "config.json"), config.dump(2) + "\n");
    write_text_file((tmp + "/" + "pruning_plan.json"), plan.to_json() + "\n");

    // The folder's other files (tokenizer, generation config...), byte for byte.
    std::set<std::string> shard_set(checkpoint.shard_files().begin(),
                                    checkpoint.shard_files().end());
    for (const auto& name : list_dir(source)) {
      if (shard_set.count(name) || name == "config.json" ||
          name == "model.safetensors.index.json" || name == "pruning_plan.json") {
        continue;
      }
      const auto from = (source + "/" + name);
      struct stat st {};
      if (::stat(from.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
        copy_file(from, (tmp + "/" + name));
      }
    }
    if (fs::exists(out)) {
      fail(out + ": appeared while writing; not replacing it");
    }
    if (::rename(tmp.c_str(), out.c_str()) != 0) {
      fail(out + ": cannot rename " + tmp + " into place: " + std::strerror(errno));
    }
  } catch (...) {
    remove_flat_dir(tmp);
    throw;
  }
  return report;
}

}  // namespace moeprune::hf
