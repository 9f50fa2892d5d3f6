// write_sparsified_checkpoint: a Hugging Face checkpoint folder whose experts' weights were
// replaced by sparse ones (exact zeros; compression/expert_sparsity.h), streamed like a pruned
// one (checkpoint_rewrite.h). By default every tool loads it: the format is the source's, only
// values change; or the experts are stored in compressed-tensors' sparse-24-bitmask.
#include <moeprune/hf/pruning.h>

#include "hf/checkpoint_rewrite.h"
#include "hf/compressed_tensors_pack.h"
#include "hf/compressed_tensors_sparse.h"
#include "hf/config.h"
#include "hf/family.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <set>
#include <vector>

namespace moeprune::hf {
namespace {

// "a.b" -> "a\\.b": a literal in a compressed-tensors "re:" target.
std::string regex_literal(const std::string& text) {
  std::string out;
  for (const char c : text) {
    if (std::string(".^$|?*+()[]{}\\").find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

// Calls fn(j, own, from) for each expert weight (2-D `.weight`) of every expert j the layer's
// bank holds: `own` its name, `from` the name its new values have in the layer's file (its
// merged group's first member's).
void for_each_expert_weight(
    const detail::PrunedLayer& layer,
    const std::function<void(int64_t, const std::string&, const std::string&)>& fn) {
  const auto& ref = *layer.ref;
  const auto& family = family_of(ref.model_type);
  for (int64_t j = 0; j < ref.num_experts; ++j) {
    const auto front = layer.front[static_cast<size_t>(j)];
    if (front < 0) continue;
    const auto own = family.expert_tensors(ref, j);
    const auto from = family.expert_tensors(ref, front);
    for (size_t t = 0; t < from.size(); ++t) {
      if (detail::weight_module(from[t]).empty() || layer.merged->info(from[t]).shape.size() != 2)
        continue;
      fn(j, own[t], from[t]);
    }
  }
}

// The compressed-tensors target naming the expert weights of `layer` its bank holds:
// "re:^<stem>(<ids>)\.(<local module names>)$".
std::string experts_target(const detail::PrunedLayer& layer) {
  const auto& ref = *layer.ref;
  const auto stem = family_of(ref.model_type).expert_stem(ref);
  std::vector<std::string> ids;
  std::set<std::string> locals;
  for_each_expert_weight(layer, [&](int64_t j, const std::string& own, const std::string&) {
    const auto id = std::to_string(j);
    if (ids.empty() || ids.back() != id) ids.push_back(id);
    locals.insert(regex_literal(detail::weight_module(own).substr(stem.size() + id.size() + 1)));
  });
  const auto join = [](const auto& parts) {
    std::string out;
    for (const auto& p : parts) out += (out.empty() ? "" : "|") + p;
    return out;
  };
  return "re:^" + regex_literal(stem) + "(" + join(ids) + ")\\.(" + join(locals) + ")$";
}

// A scratch safetensors file `path` that `fill` writes (encoded weights beside a file of new
// values), removed with this object.
class EncodedScratch {
 public:
  EncodedScratch(std::string path, const std::function<void(safetensors::Writer&)>& fill)
      : path_(std::move(path)) {
    safetensors::Writer writer(path_, /*overwrite=*/true);
    fill(writer);
    writer.finish();
    file_ = std::make_unique<safetensors::File>(path_);
  }
  ~EncodedScratch() {
    file_.reset();
    std::error_code ignored;
    std::filesystem::remove(path_, ignored);
  }
  EncodedScratch(const EncodedScratch&) = delete;
  EncodedScratch& operator=(const EncodedScratch&) = delete;
  const safetensors::File* file() const { return file_.get(); }

 private:
  std::string path_;
  std::unique_ptr<safetensors::File> file_;
};

void add_sparse24(safetensors::Writer& writer, const std::string& name,
                  const torch::Tensor& weight) {
  const auto module = detail::weight_module(name);
  const auto encoded = detail::encode_sparse24_bitmask(weight, name);
  writer.add(module + ".compressed", encoded.compressed);
  writer.add(module + ".bitmask", encoded.bitmask);
  writer.add(module + ".shape", encoded.shape);
}

// The 2-D weights of a file of new dense-layer weights (the others are biases).
std::vector<std::string> linear_weights(const safetensors::File& file) {
  std::vector<std::string> out;
  for (const auto& name : file.names()) {
    if (!detail::weight_module(name).empty() && file.info(name).shape.size() == 2)
      out.push_back(name);
  }
  return out;
}

// X.weight_packed, X.weight_scale... of a file that holds X.weight: a part of its encoding.
bool is_packed_part(const safetensors::File& file, const std::string& name) {
  const auto at = name.rfind(".weight_");
  return at != std::string::npos && file.contains(name.substr(0, at) + ".weight") &&
         !detail::encoded_parts(file, name.substr(0, at)).empty();
}

// "re:^(<m1>|<m2>...)$": exactly the named modules.
std::string modules_target(const std::vector<std::string>& modules) {
  std::string alternatives;
  for (const auto& m : modules)
    alternatives += (alternatives.empty() ? "" : "|") + regex_literal(m);
  return "re:^(" + alternatives + ")$";
}

}  // namespace

SparseFormat parse_sparse_format(const std::string& name) {
  if (name == "dense") return SparseFormat::kDense;
  if (name == "compressed-tensors") return SparseFormat::kCompressedTensors24;
  TORCH_CHECK(false, "unknown sparse format '", name, "' (dense, compressed-tensors)");
}

std::string to_string(SparseFormat format) {
  return format == SparseFormat::kDense ? "dense" : "compressed-tensors";
}

WriteReport write_sparsified_checkpoint(const Source& source,
                                        const std::map<int64_t, std::string>& experts,
                                        const std::string& out, const std::string& record,
                                        const WriteOptions& options,
                                        const std::vector<std::string>& linears,
                                        const std::string& record_list) {
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
  files.reserve(experts.size() + linears.size());
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
  detail::Replacements replaced;
  for (const auto& path : linears) {
    files.emplace_back(path);
    for (const auto& name : files.back().names()) {
      if (options.packed && is_packed_part(files.back(), name)) continue;
      TORCH_CHECK(source.checkpoint().contains(name), path, " holds ", name, ", which ", dir,
                  " does not have");
      TORCH_CHECK(replaced.emplace(name, detail::Replacement{&files.back(), nullptr}).second, name,
                  " is replaced twice");
    }
  }
  // The replaced tensors from the linears' files only (their encoded parts ride along).
  for (auto& [name, r] : replaced) {
    if (options.packed) r.encoded = r.file;
  }
  auto config = source.config().json();
  TORCH_CHECK(!options.packed || options.sparse_format == SparseFormat::kDense,
              "write_sparsified_checkpoint: quantised weights are stored pack-quantized or "
              "dense, not sparse-24-bitmask");
  std::vector<std::string> targets;
  std::vector<std::string> modules;  // dense layers' modules stored encoded
  // compressed-tensors 2:4: each layer's expert weights encoded beside its file, then copied in.
  std::vector<std::unique_ptr<EncodedScratch>> encoded;
  if (options.sparse_format == SparseFormat::kCompressedTensors24) {
    int64_t zeros = 0;
    for (auto& [prefix, layer] : layers) {
      const auto& held = layer;
      encoded.push_back(std::make_unique<EncodedScratch>(
          layer.merged->path() + ".sparse24", [&](safetensors::Writer& writer) {
            for_each_expert_weight(held,
                                   [&](int64_t j, const std::string&, const std::string& from) {
                                     const auto weight = held.merged->tensor(from);
                                     // Each member of a merged group counts; the group's tensors
                                     // are written once.
                                     zeros += (weight == 0).sum().item<int64_t>();
                                     if (held.front[static_cast<size_t>(j)] == j)
                                       add_sparse24(writer, from, weight);
                                   });
          }));
      layer.encoded = encoded.back()->file();
      targets.push_back(experts_target(layer));
    }
    for (size_t i = 0; i < linears.size(); ++i) {
      const auto& file = files[experts.size() + i];
      encoded.push_back(
          std::make_unique<EncodedScratch>(file.path() + ".sparse24", [&](safetensors::Writer& w) {
            for (const auto& name : linear_weights(file)) {
              const auto weight = file.tensor(name);
              zeros += (weight == 0).sum().item<int64_t>();
              add_sparse24(w, name, weight);
              modules.push_back(detail::weight_module(name));
            }
          }));
      for (const auto& name : file.names()) replaced.at(name).encoded = encoded.back()->file();
    }
    int64_t total = 0;
    for (const auto& name : source.checkpoint().names()) {
      total += source.checkpoint().info(name).numel();
    }
    const double sparsity = total > 0 ? static_cast<double>(zeros) / static_cast<double>(total) : 0;
    if (!modules.empty()) targets.push_back(modules_target(modules));
    config["quantization_config"] = detail::sparse24_quantization_config(targets, sparsity);
  }
  // pack-quantized: the files hold every new weight's parts beside it; the config targets every
  // Linear and ignores the modules left dense (llm-compressor's form).
  if (options.packed) {
    std::set<std::string> packed;
    const auto check = [&](const safetensors::File& file, const std::string& name) {
      TORCH_CHECK(!detail::encoded_parts(file, detail::weight_module(name)).empty(), file.path(),
                  ": ", name, " has no pack-quantized parts (", detail::weight_module(name),
                  ".weight_packed ...) to write");
    };
    for (auto& [prefix, layer] : layers) {
      for_each_expert_weight(layer, [&](int64_t, const std::string& own, const std::string& from) {
        check(*layer.merged, from);
        packed.insert(detail::weight_module(own));
      });
      layer.encoded = layer.merged;
    }
    for (size_t i = 0; i < linears.size(); ++i) {
      const auto& file = files[experts.size() + i];
      for (const auto& name : linear_weights(file)) {
        check(file, name);
        packed.insert(detail::weight_module(name));
      }
    }
    std::vector<std::string> ignore;
    for (const auto& name : source.checkpoint().names()) {
      const auto module = detail::weight_module(name);
      if (!module.empty() && source.checkpoint().info(name).shape.size() == 2 &&
          packed.count(module) == 0) {
        ignore.push_back(module);
      }
    }
    config["quantization_config"] = detail::pack_quantized_config(*options.packed, ignore);
  }
  if (!config.contains("moeprune") || !config["moeprune"].is_object()) {
    config["moeprune"] = nlohmann::ordered_json::object();
  }
  auto& section = config["moeprune"];
  if (!section.contains(record_list) || !section[record_list].is_array()) {
    section[record_list] = nlohmann::ordered_json::array();
  }
  section[record_list].push_back(entry);
  return detail::write_folder(source, layers, /*cut=*/false, out, config.dump(2) + "\n", {},
                              options, replaced);
}

}  // namespace moeprune::hf
