// moeprune inspect: a checkpoint's MoE layers, or (--families) the model families it reads.
#include <moeprune/hf/checkpoint.h>
#include <moeprune/hf/source.h>
#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/seq2seq/checkpoint.h>

#include <c10/util/Exception.h>
#include <fmt/core.h>

#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.h"

namespace cli {
namespace {

// config.json's compressed-tensors sparsity format ("?" where it does not say).
std::string stored_format_of(const std::string& dir) {
  std::ifstream file(dir + "/config.json");
  const auto c = nlohmann::json::parse(file, nullptr, /*allow_exceptions=*/false);
  if (!c.is_object() || !c.contains("quantization_config")) return "?";
  const auto& q = c["quantization_config"];
  if (!q.is_object()) return "?";
  if (q.value("quant_method", std::string()) == "fp8") return "block-scaled FP8";
  if (q.value("quant_method", std::string()) == "gptq") return "the GPTQ layout";
  const auto format = [](const nlohmann::json& f) {
    return "compressed-tensors' " + (f.is_string() ? f.get<std::string>() : "?") + " format";
  };
  // The sparse formats say it in sparsity_config, the quantised ones at the top.
  if (q.contains("sparsity_config") && q["sparsity_config"].is_object() &&
      q["sparsity_config"].contains("format") && q["sparsity_config"]["format"].is_string()) {
    return format(q["sparsity_config"]["format"]);
  }
  return format(q.contains("format") ? q["format"] : nlohmann::json());
}

}  // namespace

Runner add_inspect(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  auto families = std::make_shared<bool>(false);
  auto check = std::make_shared<bool>(false);
  auto* command = app.add_subcommand("inspect", "List a checkpoint's MoE layers");
  command->add_option("dir", *dir, "Checkpoint folder");
  command->add_flag("--families", *families,
                    "List the model families (config.json model_type) moeprune reads");
  command->add_flag("--check", *check,
                    "Also load the whole model as the other commands do: every tensor's name and "
                    "shape, the config's attention, rope and vocabulary keys, no extra tensors");
  return [command, dir, families, check]() -> int {
    if (!*command) return -1;
    if (*families) {
      for (const auto& family : moeprune::hf::supported_families()) {
        fmt::print("{:<20} {}\n", family.model_type, family.summary);
      }
      return 0;
    }
    TORCH_CHECK(!dir->empty(), "inspect: give a checkpoint folder (or --families)");
    // Through hf::Source, so weights stored in compressed-tensors' sparse or pack-quantized formats
    // read as dense.
    const moeprune::hf::Source source(*dir);
    const auto& checkpoint = source.checkpoint();
    const auto& info = source.info();
    uint64_t bytes = 0;
    for (const auto& shard : checkpoint.shard_files()) bytes += checkpoint.file(shard).file_size();
    fmt::print("{}: {} ({}), {} MoE layers, {} experts, top-{}, d_model {}, expert hidden {}\n",
               *dir, info.model_type,
               checkpoint.sharded() ? fmt::format("{} shards", checkpoint.shard_files().size())
                                    : std::string("one file"),
               info.layers.size(), info.num_experts, info.top_k, info.d_model, info.hidden_dim);
    fmt::print("{} tensors, {:.1f} MB\n", checkpoint.names().size(), bytes / 1e6);
    if (checkpoint.decoded_count() > 0) {
      fmt::print("{} weights stored in {} (read as dense)\n", checkpoint.decoded_count(),
                 stored_format_of(*dir));
    }
    // What `moeprune sparsify` recorded (config.json "moeprune": {"sparsity": [...]}).
    // describe() has read config.json already and refused it if it were not JSON.
    std::ifstream config_file(*dir + "/config.json");
    const auto config = nlohmann::json::parse(config_file, nullptr, /*allow_exceptions=*/false);
    if (config.is_object() && config.contains("moeprune") && config["moeprune"].is_object() &&
        config["moeprune"].contains("sparsity") && config["moeprune"]["sparsity"].is_array()) {
      for (const auto& r : config["moeprune"]["sparsity"]) {
        if (!r.is_object()) continue;
        std::string how;
        if (r.contains("calibration")) {
          how = fmt::format(" ({} calibration{}{})", r.value("calibration", std::string("?")),
                            r.value("router_weighted", false) ? ", router-weighted" : "",
                            r.value("sequential", true) ? ", sequential" : "");
        }
        // Records before --targets existed pruned the experts only.
        const auto targets = r.value("targets", std::string("experts"));
        const auto where = targets == "experts" ? std::string("inside the experts")
                           : targets == "all"
                               ? std::string("in every linear layer but the routers and the head")
                               : "in " + targets;
        fmt::print("sparsified: {} {} {}{}\n", r.value("method", std::string("?")),
                   r.value("pattern", std::string("?")), where, how);
      }
    }
    if (config.is_object() && config.contains("moeprune") && config["moeprune"].is_object() &&
        config["moeprune"].contains("quantization") &&
        config["moeprune"]["quantization"].is_array()) {
      for (const auto& r : config["moeprune"]["quantization"]) {
        if (!r.is_object()) continue;
        const auto group = r.value("group_size", int64_t{0});
        fmt::print("quantized (stored {}): {} W{} {} {} in {}\n",
                   r.value("stored", std::string("dequantised")),
                   r.value("method", std::string("?")), r.value("bits", int64_t{0}),
                   group == 0 ? std::string("per channel") : "g" + std::to_string(group),
                   r.value("symmetric", true) ? "symmetric" : "asymmetric",
                   r.value("targets", std::string("experts")));
      }
    }
    for (const auto& ref : info.layers) {
      std::string state;
      if (!ref.state.bank.groups.empty()) {
        state = fmt::format(" ({} experts merged into {}, router kept)", ref.num_experts,
                            ref.state.bank.groups.size());
      } else if (!ref.state.is_plain()) {
        state = fmt::format(" ({} experts pruned, router kept)", ref.removed_experts().size());
      }
      fmt::print("  [{}] {}{}{}\n", ref.index, ref.prefix, ref.fused ? " (fused experts)" : "",
                 state);
    }
    if (!*check) {
      fmt::print(
          "checked: config.json's MoE keys and the MoE layers' tensors; --check loads the "
          "whole model\n");
      return 0;
    }
    // In the dtype of the checkpoint's own embedding, so its tensors stay memory-mapped rather
    // than copied (lm::LoadOptions): the check costs reading the file, not the model's size again.
    auto dtype = torch::kFloat;
    for (const char* name : {"model.embed_tokens.weight", "shared.weight"}) {
      if (checkpoint.contains(name)) {
        dtype = moeprune::safetensors::scalar_type(checkpoint.info(name).dtype);
        break;
      }
    }
    const auto start = std::chrono::steady_clock::now();
    if (info.model_type == "switch_transformers") {
      moeprune::seq2seq::load_switch_transformer(*dir,
                                                 moeprune::seq2seq::LoadOptions().dtype(dtype));
    } else {
      moeprune::lm::load_causal_lm(*dir, moeprune::lm::LoadOptions().dtype(dtype));
    }
    fmt::print("checked: the whole model loads ({} tensors, {}) in {:.1f} s\n",
               checkpoint.names().size(), c10::toString(dtype), seconds_since(start));
    return 0;
  };
}

}  // namespace cli
