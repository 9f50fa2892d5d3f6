// moeprune inspect: a checkpoint's MoE layers, or (--families) the model families it reads.
#include <moeprune/hf/checkpoint.h>

#include <c10/util/Exception.h>
#include <fmt/core.h>

#include <memory>

#include "commands.h"

namespace cli {

Runner add_inspect(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  auto families = std::make_shared<bool>(false);
  auto* command = app.add_subcommand("inspect", "List a checkpoint's MoE layers");
  command->add_option("dir", *dir, "Checkpoint folder");
  command->add_flag("--families", *families,
                    "List the model families (config.json model_type) moeprune reads");
  return [command, dir, families]() -> int {
    if (!*command) return -1;
    if (*families) {
      for (const auto& family : moeprune::hf::supported_families()) {
        fmt::print("{:<20} {}\n", family.model_type, family.summary);
      }
      return 0;
    }
    TORCH_CHECK(!dir->empty(), "inspect: give a checkpoint folder (or --families)");
    moeprune::safetensors::Checkpoint checkpoint(*dir);
    const auto info = moeprune::hf::describe(*dir, checkpoint);
    uint64_t bytes = 0;
    for (const auto& shard : checkpoint.shard_files()) bytes += checkpoint.file(shard).file_size();
    fmt::print("{}: {} ({}), {} MoE layers, {} experts, top-{}, d_model {}, expert hidden {}\n",
               *dir, info.model_type,
               checkpoint.sharded() ? fmt::format("{} shards", checkpoint.shard_files().size())
                                    : std::string("one file"),
               info.layers.size(), info.num_experts, info.top_k, info.d_model, info.hidden_dim);
    fmt::print("{} tensors, {:.1f} MB\n", checkpoint.names().size(), bytes / 1e6);
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
    return 0;
  };
}

}  // namespace cli
