// The moeprune command line: Hugging Face MoE checkpoints on disk, one layer in memory at a time.
//
//   moeprune inspect DIR
//   moeprune score --finetuned DIR --criterion C [--pretrained DIR]
//                  [--calibration TEXT|IDS --samples N --seq-len S] [--out scores.json]
//   moeprune prune (the options of score) --experts-per-layer N | --budget TOTAL [--floor F]
//                  [--layers 0,3] [--router cut|keep] --out DIR | --plan-only plan.json
//   moeprune eval DIR TEXT|IDS [--context 512] [--stride 0] [--json out.json]
//   moeprune merge DIR --calibration TEXT|IDS --groups-per-layer G | --total-groups T --out DIR
//   moeprune tokenize TOKENIZER --text "..." | --file F
//
// docs/checkpoints.md shows each with its output.
#include <moeprune/pruning/criterion.h>

#include <torch/torch.h>

#include <exception>
#include <iostream>
#include <vector>

#include "commands.h"

int main(int argc, char** argv) {
  CLI::App app{"moeprune: score, prune, merge and evaluate Hugging Face MoE checkpoints"};
  app.require_subcommand(1);
  const auto registry = moeprune::pruning::CriterionRegistry::with_builtins();
  const std::vector<cli::Runner> commands{
      cli::add_inspect(app),  cli::add_score(app, registry), cli::add_prune(app, registry),
      cli::add_eval(app),     cli::add_merge(app),           cli::add_sparsify(app),
      cli::add_quantize(app), cli::add_tokenize(app)};
  CLI11_PARSE(app, argc, argv);
  try {
    for (const auto& run : commands) {
      const int status = run();
      if (status >= 0) return status;
    }
  } catch (const c10::Error& e) {
    std::cerr << "moeprune: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "moeprune: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
