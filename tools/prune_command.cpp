// moeprune prune: score, plan (the same count per layer, or a global budget with a per-layer
// floor), and write the pruned checkpoint, streaming the tensors from the source files.
#include <moeprune/hf/pruning.h>
#include <moeprune/hf/source.h>

#include <fmt/core.h>

#include <algorithm>
#include <iostream>
#include <memory>

#include "commands.h"

namespace cli {
namespace {

struct PruneArgs {
  ScoreArgs score;
  int64_t per_layer = -1, budget = -1, floor = 0;
  std::vector<std::string> layers;
  std::string router = "cut", out, plan_only;
};

int run_prune(const PruneArgs& args, const moeprune::pruning::CriterionRegistry& registry) {
  TORCH_CHECK(!args.out.empty() || !args.plan_only.empty(),
              "give --out (a new folder) or --plan-only FILE");
  const auto& s = args.score;
  if (args.plan_only.empty()) check_new_folder("--out", args.out);
  check_result_path(
      "--plan-only", args.plan_only,
      {s.finetuned, s.pretrained, s.calibration.path, s.calibration.tokenizer, s.moe_inputs});
  TORCH_CHECK((args.per_layer >= 0) != (args.budget >= 0),
              "give --experts-per-layer N (the same in every layer) or --budget TOTAL (over all "
              "layers, at least --floor kept per layer)");
  const auto start = std::chrono::steady_clock::now();
  auto score_args = args.score;
  score_args.prune_count = std::max<int64_t>(args.per_layer, 0);
  // The folder is opened once: scoring, planning and writing read the same config and tensors.
  const moeprune::hf::Source source(args.score.finetuned);
  const auto& info = source.info();
  score_args.journal_dir = (args.plan_only.empty() ? args.out : args.plan_only) + ".journal";
  auto scored = compute_scores(score_args, source, registry);
  const auto& scores = scored.scores;
  const auto view = moeprune::hf::router_view(source);
  moeprune::pruning::PruningPlan plan;
  if (args.per_layer >= 0) {
    plan = moeprune::pruning::PruningPlan::same_count(scores, *view, args.per_layer,
                                                      moeprune::hf::layer_keys(info, args.layers),
                                                      args.score.criterion);
  } else {
    TORCH_CHECK(args.layers.empty(),
                "--layers goes with --experts-per-layer; --budget ranks the "
                "experts of every MoE layer together");
    plan = moeprune::pruning::PruningPlan::global_budget(scores, *view, args.budget, args.floor,
                                                         args.score.criterion);
  }
  std::cout << plan.table();
  if (!args.plan_only.empty()) {
    write_file_atomically(args.plan_only, plan.to_json() + "\n");
    scored.finish();
    fmt::print("plan written to {}\n", args.plan_only);
    return 0;
  }
  moeprune::hf::WriteOptions wo;
  wo.router =
      args.router == "keep" ? moeprune::hf::RouterRows::kKeep : moeprune::hf::RouterRows::kCut;
  LazyBar write_bar("writing", "MB");
  const auto progress = write_bar.callback();
  wo.progress = [&](uint64_t done, uint64_t total) {
    progress(static_cast<int64_t>(done >> 20), static_cast<int64_t>(total >> 20));
  };
  const auto report = moeprune::hf::write_pruned_checkpoint(source, plan, args.out, wo);
  write_bar.finish();
  scored.finish();
  const double seconds = seconds_since(start);
  fmt::print(
      "wrote {}: {:.1f} MB in {:.1f} s ({:.0f} MB/s); tensors copied {}, sliced {}, dropped {}, "
      "zeroed {}; peak RSS {:.0f} MB\n",
      args.out, report.bytes_written / 1e6, seconds, report.bytes_written / 1e6 / seconds,
      report.tensors_copied, report.tensors_sliced, report.tensors_dropped, report.tensors_zeroed,
      peak_rss_mb());
  return 0;
}

}  // namespace

Runner add_prune(CLI::App& app, const moeprune::pruning::CriterionRegistry& registry) {
  auto args = std::make_shared<PruneArgs>();
  auto* command = app.add_subcommand("prune", "Prune experts and write a new checkpoint folder");
  args->score.add_options(command, registry);
  command->add_option("--experts-per-layer", args->per_layer,
                      "Experts pruned in each chosen MoE layer");
  command->add_option("--budget", args->budget,
                      "Instead: experts pruned in all, the lowest scores over every layer");
  command
      ->add_option("--floor", args->floor,
                   "With --budget: experts every layer keeps at least (besides what its "
                   "router's top-k needs)")
      ->capture_default_str();
  command
      ->add_option("--layers", args->layers,
                   "MoE layers to prune, by index or prefix (default: all)")
      ->delimiter(',');
  command
      ->add_option("--router", args->router,
                   "cut: remove pruned experts' router rows (transformers sees fewer experts; "
                   "every layer must lose the same number); keep: keep the rows and zero the "
                   "experts (the paper's token-choice semantics; any counts)")
      ->check(CLI::IsMember({"cut", "keep"}))
      ->capture_default_str();
  command->add_option("--out", args->out, "Output folder (must not exist)");
  command->add_option("--plan-only", args->plan_only, "Only write the plan JSON here");
  return [command, args, &registry]() -> int {
    if (!*command) return -1;
    return run_prune(*args, registry);
  };
}

}  // namespace cli
