#include "hf/compressed_tensors_quantized.h"

#include "hf/compressed_tensors_pack.h"

#include <torch/torch.h>

#include <optional>
#include <regex>

namespace moeprune::hf::detail {
namespace {

// One target or ignore entry, compiled once.
struct Matcher {
  std::string text;
  std::optional<std::regex> pattern;
  explicit Matcher(std::string entry) : text(std::move(entry)) {
    if (text.rfind("re:", 0) != 0) return;
    try {
      pattern.emplace(text.substr(3));
    } catch (const std::regex_error& e) {
      TORCH_CHECK(false, "quantization_config target \"", text,
                  "\" is not a regular expression moeprune reads: ", e.what());
    }
  }
  // compressed-tensors' is_match on a name: re.match (anchored at the start only), else the exact
  // name, or the class every packed module is.
  bool matches(const std::string& module) const {
    if (pattern) {
      return std::regex_search(module, *pattern, std::regex_constants::match_continuous);
    }
    return text == module || text == "Linear";
  }
};

bool any_match(const std::vector<Matcher>& matchers, const std::string& module) {
  for (const auto& m : matchers) {
    if (m.matches(module)) return true;
  }
  return false;
}

std::vector<Matcher> compile(const std::vector<std::string>& entries) {
  std::vector<Matcher> out;
  out.reserve(entries.size());
  for (const auto& e : entries) out.emplace_back(e);
  return out;
}

}  // namespace

std::vector<PackedGroup> pack_quantized_groups(const Config& config) {
  if (!config.is_set("quantization_config")) return {};
  const auto& q = config.json().at("quantization_config");
  if (!q.is_object() || q.value("quant_method", std::string()) != "compressed-tensors") return {};
  if (!q.contains("config_groups") || !q["config_groups"].is_object() ||
      q["config_groups"].empty()) {
    return {};
  }
  const auto where = config.path() + ": quantization_config.config_groups.";
  TORCH_CHECK(!q.contains("sparsity_config") || !q["sparsity_config"].is_object() ||
                  q["sparsity_config"].empty() || !q["sparsity_config"].contains("format") ||
                  q["sparsity_config"]["format"] == "dense",
              config.path(),
              ": quantization_config both quantises and sparsifies; moeprune reads one or the "
              "other");
  const auto top_format = q.contains("format") && q["format"].is_string()
                              ? q["format"].get<std::string>()
                              : std::string();
  std::vector<PackedGroup> groups;
  for (const auto& [name, g] : q["config_groups"].items()) {
    TORCH_CHECK(g.is_object(), where, name, " should be an object");
    const auto format = g.contains("format") && g["format"].is_string()
                            ? g["format"].get<std::string>()
                            : top_format;
    TORCH_CHECK(format == "pack-quantized", where, name, ".format is \"", format,
                "\"; moeprune reads pack-quantized weights only");
    for (const char* key : {"input_activations", "output_activations"}) {
      TORCH_CHECK(!g.contains(key) || g[key].is_null(), where, name, ".", key,
                  " is set: activation quantisation is not read (weight-only schemes only)");
    }
    TORCH_CHECK(g.contains("weights") && g["weights"].is_object(), where, name,
                ".weights should be an object");
    TORCH_CHECK(g.contains("targets") && g["targets"].is_array() && !g["targets"].empty(), where,
                name, ".targets should be a non-empty list");
    const auto& w = g["weights"];
    PackedGroup group;
    group.name = name;
    for (const auto& t : g["targets"]) {
      TORCH_CHECK(t.is_string(), where, name, ".targets should hold strings");
      group.targets.push_back(t.get<std::string>());
    }
    const auto kind = w.value("type", std::string("int"));
    TORCH_CHECK(kind == "int", where, name, ".weights.type is \"", kind,
                "\"; pack-quantized weights are int");
    TORCH_CHECK(w.contains("num_bits") && w["num_bits"].is_number_integer(), where, name,
                ".weights.num_bits should be an integer");
    group.bits = w["num_bits"].get<int64_t>();
    TORCH_CHECK(group.bits >= 1 && group.bits <= 8, where, name, ".weights.num_bits is ",
                group.bits, "; pack-quantized stores 1 to 8 bits");
    group.symmetric = w.value("symmetric", true);
    group.act_order_groups = w.contains("actorder") && w["actorder"].is_string() &&
                             (w["actorder"] == "group" || w["actorder"] == "dynamic");
    TORCH_CHECK(!w.contains("dynamic") || w["dynamic"] == false, where, name,
                ".weights.dynamic is set: dynamic weight quantisation is not read");
    const auto strategy = w.contains("strategy") && w["strategy"].is_string()
                              ? w["strategy"].get<std::string>()
                              : std::string();
    if (strategy == "group") {
      TORCH_CHECK(w.contains("group_size") && w["group_size"].is_number_integer() &&
                      w["group_size"].get<int64_t>() >= 1,
                  where, name,
                  ".weights.group_size should be a positive integer with strategy "
                  "group");
      group.group_size = w["group_size"].get<int64_t>();
    } else {
      TORCH_CHECK(strategy == "channel", where, name, ".weights.strategy is \"", strategy,
                  "\"; moeprune reads group and channel scales");
    }
    groups.push_back(std::move(group));
  }
  if (q.contains("ignore") && q["ignore"].is_array()) {
    std::vector<std::string> ignore;
    for (const auto& entry : q["ignore"]) {
      TORCH_CHECK(entry.is_string(), config.path(),
                  ": quantization_config.ignore should hold "
                  "strings");
      ignore.push_back(entry.get<std::string>());
    }
    for (auto& g : groups) g.ignore = ignore;
  }
  return groups;
}

bool targets_module(const PackedGroup& group, const std::string& module) {
  return any_match(compile(group.targets), module) && !any_match(compile(group.ignore), module);
}

int64_t add_pack_quantized_weights(const Config& config, safetensors::Checkpoint& checkpoint) {
  const auto groups = pack_quantized_groups(config);
  if (groups.empty()) return 0;
  std::vector<std::vector<Matcher>> targets;
  for (const auto& g : groups) targets.push_back(compile(g.targets));
  const auto ignore = compile(groups.front().ignore);
  int64_t added = 0;
  for (const auto& name : checkpoint.names()) {
    const std::string suffix = ".weight_packed";
    if (name.size() <= suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    const auto module = name.substr(0, name.size() - suffix.size());
    const PackedGroup* group = nullptr;
    for (size_t i = 0; i < groups.size() && group == nullptr; ++i) {
      if (any_match(targets[i], module) && !any_match(ignore, module)) group = &groups[i];
    }
    TORCH_CHECK(group != nullptr, checkpoint.directory(), ": ", name,
                " is stored pack-quantized but no config group of ", config.path(), " targets ",
                module);
    std::vector<std::string> parts = {module + ".weight_packed", module + ".weight_scale",
                                      module + ".weight_shape"};
    if (!group->symmetric) parts.push_back(module + ".weight_zero_point");
    for (const auto& part : parts) {
      TORCH_CHECK(checkpoint.contains(part), checkpoint.directory(), ": pack-quantized ", module,
                  ".weight needs ", part, ", which is missing");
    }
    const bool has_g_idx = checkpoint.contains(module + ".weight_g_idx");
    TORCH_CHECK(has_g_idx || !group->act_order_groups, checkpoint.directory(), ": ", module,
                " is quantised with ", group->name, "'s actorder \"group\", but ", module,
                ".weight_g_idx (each input's group) is missing");
    if (has_g_idx) parts.push_back(module + ".weight_g_idx");
    TORCH_CHECK(!checkpoint.contains(module + ".weight"), checkpoint.directory(), ": ", module,
                " holds both .weight and .weight_packed");
    const auto shape = checkpoint.tensor(module + ".weight_shape").to(torch::kLong).flatten();
    TORCH_CHECK(shape.numel() == 2, checkpoint.directory(), ": ", module,
                ".weight_shape should hold rows and cols, got ", shape.numel(), " values");
    const int64_t rows = shape[0].item<int64_t>(), cols = shape[1].item<int64_t>();
    TORCH_CHECK(rows >= 1 && cols >= 1, checkpoint.directory(), ": ", module, ".weight_shape is [",
                rows, ", ", cols, "]");
    const auto& scale = checkpoint.info(module + ".weight_scale");
    const int64_t groups_expected =
        group->group_size == 0 ? 1 : (cols + group->group_size - 1) / group->group_size;
    TORCH_CHECK(scale.shape == std::vector<int64_t>({rows, groups_expected}),
                checkpoint.directory(), ": ", module, ".weight_scale is ",
                c10::IntArrayRef(scale.shape), ", expected [", rows, ", ", groups_expected,
                "] for a ", rows, " x ", cols, " weight with ", group->name, "'s ",
                group->group_size == 0 ? std::string("one scale per row")
                                       : "groups of " + std::to_string(group->group_size));
    TORCH_CHECK(c10::isFloatingType(scale.scalar_type), checkpoint.directory(), ": ", module,
                ".weight_scale is ", scale.scalar_type, ", not floating point");
    safetensors::Checkpoint::Decoded d;
    d.info.name = module + ".weight";
    d.info.dtype = scale.dtype;
    d.info.scalar_type = scale.scalar_type;
    d.info.shape = {rows, cols};
    d.parts = parts;
    const auto bits = group->bits;
    const bool symmetric = group->symmetric;
    const auto dtype = scale.scalar_type;
    const auto group_size = group->group_size;
    d.decode = [module, bits, symmetric, has_g_idx, dtype,
                group_size](const safetensors::Checkpoint& c) {
      PackQuantized p;
      p.weight_packed = c.tensor(module + ".weight_packed");
      p.weight_scale = c.tensor(module + ".weight_scale");
      p.weight_shape = c.tensor(module + ".weight_shape");
      if (!symmetric) p.weight_zero_point = c.tensor(module + ".weight_zero_point");
      if (has_g_idx) p.weight_g_idx = c.tensor(module + ".weight_g_idx");
      return decode_pack_quantized(p, bits, symmetric, dtype, module, group_size);
    };
    checkpoint.add_decoded(std::move(d));
    ++added;
  }
  return added;
}

}  // namespace moeprune::hf::detail
