// The streamed, atomic writing of a rewritten checkpoint folder (checkpoint_rewrite.h): each
// source tensor copied byte for byte, sliced to the kept rows, zeroed, dropped, renamed, or
// replaced by a merged expert's bytes, without passing through this process's memory.
#include "hf/checkpoint_rewrite.h"

#include "hf/family.h"
#include "io/posix_file.h"

#include <torch/torch.h>

#include <sys/stat.h>

#include <algorithm>
#include <numeric>
#include <set>

namespace moeprune::hf::detail {
namespace {

// What the output holds for one source tensor.
struct TensorPlan {
  std::string out_name;                        // empty: dropped
  bool zero = false;                           // some rows (or all) written as zeros
  bool merged = false;                         // a merged expert's weights
  std::vector<safetensors::ByteRange> ranges;  // empty: copied whole
  std::vector<int64_t> shape;
  // Written as the `parts` of module `encoded_from` of this file (encoded_parts).
  const safetensors::File* encoded = nullptr;
  std::string encoded_from;
  std::vector<std::string> parts;
};

// Sets p's encoding when `file` (may be null) holds `module` encoded.
void plan_encoded(TensorPlan& p, const safetensors::File* file, const std::string& module) {
  if (file == nullptr || module.empty()) return;
  p.parts = encoded_parts(*file, module);
  if (p.parts.empty()) return;
  p.encoded = file;
  p.encoded_from = module;
}

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
    if (layer.front[static_cast<size_t>(j)] < 0) {
      return p;  // an expert the layer does not hold (zeroed by pruning): copied
    }
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
    plan_encoded(p, layer.encoded, weight_module(from));
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
                       const std::map<std::string, PrunedLayer>& pruned, bool cut,
                       const Replacements& replaced) {
  const auto r = replaced.find(name);
  if (r != replaced.end()) {
    const auto& ti = f.info(name);
    const auto& from = *r->second.file;
    TORCH_CHECK(from.contains(name), from.path(), ": the new weights lack ", name);
    const auto& ri = from.info(name);
    TORCH_CHECK(ri.shape == ti.shape && ri.scalar_type == ti.scalar_type, from.path(), ": ", name,
                " is ", ri.scalar_type, " ", ri.shape, ", the checkpoint's is ", ti.scalar_type,
                " ", ti.shape);
    TensorPlan p;
    p.out_name = name;
    p.shape = ti.shape;
    p.ranges = {{from.fd(), from.data_offset() + ri.begin, ri.nbytes()}};
    p.merged = true;
    plan_encoded(p, r->second.encoded, weight_module(name));
    return p;
  }
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
                                    const Replacements& replaced, const std::string& dir,
                                    const WriteOptions& options, WriteReport& report,
                                    uint64_t& data_bytes) {
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
      const auto p = plan_tensor(name, f, pruned, cut, replaced);
      if (p.out_name.empty()) {
        ++report.tensors_dropped;
        continue;
      }
      const auto& ti = f.info(name);
      if (p.encoded != nullptr) {
        const auto module = weight_module(p.out_name);
        for (const auto& part : p.parts) {
          const auto out_name = module + "." + part;
          writer.add_copy(out_name, *p.encoded, p.encoded_from + "." + part);
          weight_map[out_name] = shard;
        }
        ++report.tensors_merged;
        any = true;
        continue;
      }
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

}  // namespace

std::vector<std::string> encoded_parts(const safetensors::File& file, const std::string& module) {
  // The first part of each format marks it; the others are those present (a symmetric scheme
  // has no zero points, a scheme without act-order no g_idx).
  static const std::vector<std::vector<std::string>> formats = {
      {"compressed", "bitmask", "shape"},
      {"weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape"}};
  for (const auto& parts : formats) {
    if (!file.contains(module + "." + parts.front())) continue;
    std::vector<std::string> present;
    for (const auto& part : parts) {
      if (file.contains(module + "." + part)) present.push_back(part);
    }
    return present;
  }
  return {};
}

std::string weight_module(const std::string& name) {
  const std::string suffix = ".weight";
  if (name.size() <= suffix.size() ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
    return {};
  }
  return name.substr(0, name.size() - suffix.size());
}

void check_dense_source(const Source& source) {
  TORCH_CHECK(source.checkpoint().decoded_count() == 0, source.directory(),
              " stores its weights encoded (compressed-tensors' sparse or pack-quantized "
              "formats, block-scaled FP8 or the GPTQ layout); moeprune reads it, and cuts experts "
              "out of it (prune "
              "--router cut), but "
              "writes new or zeroed weights only from dense checkpoints: write it dense first "
              "(moeprune sparsify/quantize without --format, or transformers' save_pretrained)");
}

void keep_dropped_mlp_layers(const nlohmann::ordered_json& config, nlohmann::ordered_json& record) {
  if (config.contains("moeprune") && config["moeprune"].is_object() &&
      config["moeprune"].contains("dropped_mlp_layers")) {
    record["dropped_mlp_layers"] = config["moeprune"]["dropped_mlp_layers"];
  }
}

void keep_slimming_records(const nlohmann::ordered_json& config, nlohmann::ordered_json& record) {
  if (!config.contains("moeprune") || !config["moeprune"].is_object()) return;
  for (const char* list : {"sparsity", "quantization"}) {
    if (config["moeprune"].contains(list)) record[list] = config["moeprune"][list];
  }
}

WriteReport write_folder(const Source& source, const std::map<std::string, PrunedLayer>& layers,
                         bool cut, const std::string& out, const std::string& config_text,
                         const std::map<std::string, std::string>& extra,
                         const WriteOptions& options, const Replacements& replaced) {
  const auto& checkpoint = source.checkpoint();
  // Encoded weights (compressed-tensors) are copied, dropped or renamed by their stored parts;
  // only replacing or zeroing one needs a dense source.
  if (!cut || !replaced.empty()) check_dense_source(source);
  io::AtomicFolder folder(out);
  const auto& dir = folder.path();
  WriteReport report;
  uint64_t data_bytes = 0;
  for (const auto& [name, r] : replaced) {
    TORCH_CHECK(checkpoint.contains(name), source.directory(), ": has no tensor ", name,
                " to replace");
  }
  const auto weight_map =
      write_shards(checkpoint, layers, cut, replaced, dir, options, report, data_bytes);
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
  for (const auto& name : io::list_folder(source.directory())) {
    if (shards.count(name) || name == "config.json" || name == "model.safetensors.index.json" ||
        extra.count(name) || name == "pruning_plan.json" || name == "merge_groups.json") {
      continue;
    }
    const auto from = source.directory() + "/" + name;
    struct stat st {};
    if (::stat(from.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      io::copy_file(from, dir + "/" + name);
    }
  }
  folder.commit();
  return report;
}

}  // namespace moeprune::hf::detail
