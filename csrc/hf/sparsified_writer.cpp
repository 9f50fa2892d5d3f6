// write_sparsified_checkpoint: a Hugging Face checkpoint folder whose experts' weights were
// replaced by sparse ones (exact zeros; compression/expert_sparsity.h), streamed like a pruned
// one (checkpoint_rewrite.h). By default every tool loads it: the format is the source's, only
// values change; or the experts are stored in compressed-tensors' sparse-24-bitmask.
#include <moeprune/hf/pruning.h>

#include "hf/checkpoint_rewrite.h"
#include "hf/compressed_tensors_sparse.h"
#include "hf/config.h"
#include "hf/family.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <memory>
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

// The expert weights of `layer` that its merged file holds, in sparse-24-bitmask next to it
// (`path`, removed with this object); fills the layer's compressed-tensors target and counts the
// zeros written (each expert a merged group writes counts once per member).
class Sparse24File {
 public:
  Sparse24File(const detail::PrunedLayer& layer, std::string path, std::string& target,
               int64_t& zeros)
      : path_(std::move(path)) {
    const auto& ref = *layer.ref;
    const auto& family = family_of(ref.model_type);
    const auto stem = family.expert_stem(ref);
    safetensors::Writer writer(path_, /*overwrite=*/true);
    std::vector<std::string> ids, locals;
    for (int64_t j = 0; j < ref.num_experts; ++j) {
      const auto front = layer.front[static_cast<size_t>(j)];
      if (front < 0) continue;
      ids.push_back(std::to_string(j));
      const auto own = family.expert_tensors(ref, j);
      const auto from = family.expert_tensors(ref, front);
      for (size_t t = 0; t < from.size(); ++t) {
        const std::string suffix = ".weight";
        if (from[t].size() <= suffix.size() ||
            from[t].compare(from[t].size() - suffix.size(), suffix.size(), suffix) != 0) {
          continue;
        }
        const auto weight = layer.merged->tensor(from[t]);
        if (weight.dim() != 2) continue;
        zeros += (weight == 0).sum().item<int64_t>();
        if (ids.size() == 1) {  // the local names ("gate_proj"): every expert has the same
          const auto module = own[t].substr(0, own[t].size() - suffix.size());
          locals.push_back(regex_literal(module.substr(stem.size() + ids.back().size() + 1)));
        }
        if (front != j) continue;  // a merged group's member: its front's tensors serve
        const auto module = from[t].substr(0, from[t].size() - suffix.size());
        const auto encoded = detail::encode_sparse24_bitmask(weight, from[t]);
        writer.add(module + ".compressed", encoded.compressed);
        writer.add(module + ".bitmask", encoded.bitmask);
        writer.add(module + ".shape", encoded.shape);
      }
    }
    writer.finish();
    file_ = std::make_unique<safetensors::File>(path_);
    auto join = [](const std::vector<std::string>& parts) {
      std::string out;
      for (const auto& p : parts) out += (out.empty() ? "" : "|") + p;
      return out;
    };
    target = "re:^" + regex_literal(stem) + "(" + join(ids) + ")\\.(" + join(locals) + ")$";
  }
  ~Sparse24File() {
    file_.reset();
    std::error_code ignored;
    std::filesystem::remove(path_, ignored);
  }
  Sparse24File(const Sparse24File&) = delete;
  Sparse24File& operator=(const Sparse24File&) = delete;
  const safetensors::File* file() const { return file_.get(); }

 private:
  std::string path_;
  std::unique_ptr<safetensors::File> file_;
};

// The 2-D weights of a file of sparsified dense layers, in sparse-24-bitmask next to it (`path`,
// removed with this object); adds their module names to the compressed-tensors targets and counts
// their zeros.
class Sparse24Linears {
 public:
  Sparse24Linears(const safetensors::File& weights, std::string path,
                  std::vector<std::string>& modules, int64_t& zeros)
      : path_(std::move(path)) {
    safetensors::Writer writer(path_, /*overwrite=*/true);
    for (const auto& name : weights.names()) {
      const auto module = detail::weight_module(name);
      const auto weight = weights.tensor(name);
      if (module.empty() || weight.dim() != 2) continue;
      zeros += (weight == 0).sum().item<int64_t>();
      const auto encoded = detail::encode_sparse24_bitmask(weight, name);
      writer.add(module + ".compressed", encoded.compressed);
      writer.add(module + ".bitmask", encoded.bitmask);
      writer.add(module + ".shape", encoded.shape);
      modules.push_back(module);
    }
    writer.finish();
    file_ = std::make_unique<safetensors::File>(path_);
  }
  ~Sparse24Linears() {
    file_.reset();
    std::error_code ignored;
    std::filesystem::remove(path_, ignored);
  }
  Sparse24Linears(const Sparse24Linears&) = delete;
  Sparse24Linears& operator=(const Sparse24Linears&) = delete;
  const safetensors::File* file() const { return file_.get(); }

 private:
  std::string path_;
  std::unique_ptr<safetensors::File> file_;
};

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
      TORCH_CHECK(source.checkpoint().contains(name), path, " holds ", name, ", which ", dir,
                  " does not have");
      TORCH_CHECK(replaced.emplace(name, detail::Replacement{&files.back(), nullptr}).second, name,
                  " is replaced twice");
    }
  }
  auto config = source.config().json();
  // compressed-tensors: each layer's expert weights encoded beside its file, then copied in.
  std::vector<std::unique_ptr<Sparse24File>> encoded;
  std::vector<std::unique_ptr<Sparse24Linears>> encoded_linears;
  if (options.sparse_format == SparseFormat::kCompressedTensors24) {
    std::vector<std::string> targets;
    int64_t zeros = 0;
    for (auto& [prefix, layer] : layers) {
      targets.emplace_back();
      encoded.push_back(std::make_unique<Sparse24File>(layer, layer.merged->path() + ".sparse24",
                                                       targets.back(), zeros));
      layer.sparse24 = encoded.back()->file();
    }
    std::vector<std::string> modules;
    for (size_t i = 0; i < linears.size(); ++i) {
      const auto& file = files[experts.size() + i];
      encoded_linears.push_back(
          std::make_unique<Sparse24Linears>(file, file.path() + ".sparse24", modules, zeros));
      for (const auto& name : file.names()) {
        replaced.at(name).sparse24 = encoded_linears.back()->file();
      }
    }
    if (!modules.empty()) {
      std::string alternatives;
      for (const auto& m : modules)
        alternatives += (alternatives.empty() ? "" : "|") + regex_literal(m);
      targets.push_back("re:^(" + alternatives + ")$");
    }
    int64_t total = 0;
    for (const auto& name : source.checkpoint().names()) {
      total += source.checkpoint().info(name).numel();
    }
    config["quantization_config"] = detail::sparse24_quantization_config(
        targets, total > 0 ? static_cast<double>(zeros) / static_cast<double>(total) : 0.0);
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
