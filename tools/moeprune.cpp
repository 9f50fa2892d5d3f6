// The moeprune command line: expert pruning of Hugging Face checkpoints on disk.
//
//   moeprune inspect DIR
//   moeprune prune --pretrained DIR --finetuned DIR --criterion router_norm_change
//                  --experts-per-layer N [--layers 0,3] [--router cut|keep]
//                  [--calibration FILE] --out DIR
//
// prune scores the experts of every MoE layer (one layer in memory at a time, routers only when
// the criterion allows), prints the plan, and writes a checkpoint folder that transformers loads
// as a model with fewer experts, streaming the tensors from the source files.

#include <moeprune/hf/checkpoint.h>
#include <moeprune/hf/pruning.h>
#include <moeprune/pruning/criterion.h>
#include <moeprune/train/progress_bar.h>

#include <fmt/core.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include <chrono>
#include <exception>
#include <fstream>
#include <iostream>
#include <memory>

namespace {

int inspect(const std::string& dir) {
  moeprune::safetensors::Checkpoint checkpoint(dir);
  const auto info = moeprune::hf::describe(dir, checkpoint);
  uint64_t bytes = 0;
  for (const auto& shard : checkpoint.shard_files()) {
    bytes += checkpoint.file(shard).file_size();
  }
  fmt::print("{}: {} ({}), {} MoE layers, {} experts, top-{}, d_model {}, expert hidden {}\n", dir,
             info.model_type,
             checkpoint.sharded() ? fmt::format("{} shards", checkpoint.shard_files().size())
                                  : std::string("one file"),
             info.layers.size(), info.num_experts, info.top_k, info.d_model, info.hidden_dim);
  fmt::print("{} tensors, {:.1f} MB\n", checkpoint.names().size(), bytes / 1e6);
  for (const auto& ref : info.layers) {
    fmt::print("  [{}] {}{}{}\n", ref.index, ref.prefix, ref.fused ? " (fused experts)" : "",
               ref.state.is_plain() ? std::string()
                                    : fmt::format(" ({} experts pruned, router kept)",
                                                  ref.removed_experts().size()));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moeprune: expert pruning of Hugging Face MoE checkpoints (Mixtral, Switch)"};
  app.require_subcommand(1);

  std::string inspect_dir;
  auto* inspect_cmd = app.add_subcommand("inspect", "List a checkpoint's MoE layers");
  inspect_cmd->add_option("dir", inspect_dir, "Checkpoint folder")->required();

  moeprune::hf::ScoreOptions score;
  int64_t per_layer = 0;
  std::vector<std::string> layers;
  std::string router = "cut", out, plan_only;
  auto* prune = app.add_subcommand("prune", "Prune experts and write a new checkpoint folder");
  prune->add_option("--finetuned", score.finetuned, "Fine-tuned checkpoint folder (pruned)")
      ->required();
  prune->add_option("--pretrained", score.pretrained,
                    "Pre-trained checkpoint folder (router_norm_change, neuron_magnitude_change)");
  const auto registry = moeprune::pruning::CriterionRegistry::with_builtins();
  std::string names;
  for (const auto& n : registry.names()) {
    names += (names.empty() ? "" : ", ") + n;
  }
  prune->add_option("--criterion", score.criterion, "Pruning criterion: " + names)
      ->capture_default_str();
  prune->add_option("--experts-per-layer", per_layer, "Experts pruned in each chosen MoE layer")
      ->required();
  prune->add_option("--layers", layers, "MoE layers to prune, by index or prefix (default: all)")
      ->delimiter(',');
  prune
      ->add_option("--router", router,
                   "cut: remove pruned experts' router rows (transformers sees fewer experts); "
                   "keep: keep the rows and zero the experts (the paper's token-choice semantics)")
      ->check(CLI::IsMember({"cut", "keep"}))
      ->capture_default_str();
  prune->add_option("--calibration", score.calibration,
                    "safetensors file of MoE-layer input hidden states, one tensor per layer "
                    "prefix (importance, frequency, reap); scripts/hf_capture_moe_inputs.py "
                    "makes one from token ids");
  prune->add_option("--seed", score.seed, "Seed of the random criterion")->capture_default_str();
  prune->add_option("--out", out, "Output folder (must not exist)");
  prune->add_option("--plan-only", plan_only, "Only write the plan JSON here, no checkpoint");

  CLI11_PARSE(app, argc, argv);
  try {
    if (*inspect_cmd) {
      return inspect(inspect_dir);
    }
    if (out.empty() && plan_only.empty()) {
      throw std::runtime_error("give --out (a new folder) or --plan-only FILE");
    }
    const auto start = std::chrono::steady_clock::now();
    std::unique_ptr<moeprune::ProgressBar> bar;
    score.progress = [&](int64_t done, int64_t total) {
      if (!bar) {
        bar = std::make_unique<moeprune::ProgressBar>(total, "scoring", "layers");
      }
      bar->update(done);
    };
    const auto scores = moeprune::hf::score_checkpoint(score, registry);
    if (bar) {
      bar->finish();
    }
    moeprune::safetensors::Checkpoint checkpoint(score.finetuned);
    const auto info = moeprune::hf::describe(score.finetuned, checkpoint);
    const auto plan = moeprune::pruning::PruningPlan::same_count(
        scores, *moeprune::hf::router_view(checkpoint, info), per_layer,
        moeprune::hf::layer_keys(info, layers), score.criterion);
    std::cout << plan.table();
    if (!plan_only.empty()) {
      std::ofstream(plan_only) << plan.to_json() << "\n";
      fmt::print("plan written to {}\n", plan_only);
      return 0;
    }
    moeprune::hf::WriteOptions wo;
    wo.router = router == "keep" ? moeprune::hf::RouterRows::kKeep : moeprune::hf::RouterRows::kCut;
    std::unique_ptr<moeprune::ProgressBar> write_bar;
    wo.progress = [&](uint64_t done, uint64_t total) {
      if (!write_bar) {
        write_bar = std::make_unique<moeprune::ProgressBar>(static_cast<int64_t>(total >> 20),
                                                            "writing", "MB");
      }
      write_bar->update(static_cast<int64_t>(done >> 20));
    };
    const auto report = moeprune::hf::write_pruned_checkpoint(score.finetuned, plan, out, wo);
    if (write_bar) {
      write_bar->finish();
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    // VmHWM: this process's own peak (getrusage would include pages a large parent shared
    // with us before exec).
    double peak_mb = 0;
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("VmHWM:", 0) == 0) {
        peak_mb = std::stod(line.substr(6)) / 1024.0;
      }
    }
    fmt::print(
        "wrote {}: {:.1f} MB in {:.1f} s ({:.0f} MB/s); tensors copied {}, sliced {}, dropped {}, "
        "zeroed {}; peak RSS {:.0f} MB\n",
        out, report.bytes_written / 1e6, seconds, report.bytes_written / 1e6 / seconds,
        report.tensors_copied, report.tensors_sliced, report.tensors_dropped, report.tensors_zeroed,
        peak_mb);
  } catch (const c10::Error& e) {
    std::cerr << "moeprune: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "moeprune: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
