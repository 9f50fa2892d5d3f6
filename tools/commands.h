#pragma once

// The moeprune subcommands. Each add_* registers its options on the application and returns
// what runs it once the command line is parsed.
#include <moeprune/compression/expert_sparsity.h>
#include <moeprune/hf/source.h>
#include <moeprune/models/lm/stream_journal.h>
#include <moeprune/pruning/criterion.h>
#include <moeprune/pruning/pruning_plan.h>

#include <CLI/CLI.hpp>

#include "cli_common.h"

#include <functional>
#include <memory>
#include <string>

namespace cli {

using Runner = std::function<int()>;

Runner add_inspect(CLI::App& app);
Runner add_score(CLI::App& app, const moeprune::pruning::CriterionRegistry& registry);
Runner add_prune(CLI::App& app, const moeprune::pruning::CriterionRegistry& registry);
Runner add_eval(CLI::App& app);
Runner add_tokenize(CLI::App& app);
Runner add_merge(CLI::App& app);
Runner add_sparsify(CLI::App& app);
Runner add_quantize(CLI::App& app);

/// The calibration options score, prune, merge and sparsify share: --calibration (`what` says
/// what the data is for), --calibration-format, --tokenizer, --samples, --seq-len and
/// --batch-size. Returns the --calibration option.
CLI::Option* add_calibration_options(CLI::App* command, TokenSource& source, int64_t& samples,
                                     int64_t& seq_len, int64_t& batch_size,
                                     const std::string& what);

/// What sparsify and quantize share: how each expert and dense layer is calibrated, what is
/// targeted, the forward's dtype and the scratch folder.
struct SlimmingArgs {
  std::string calibration_mode = "routed", targets = "experts", dtype = "fp32",
              scratch_dir = "/tmp";
  int64_t min_tokens = 1;
  bool router_weighted = false, not_sequential = false;

  /// --expert-calibration, --router-weighted, --min-tokens, --not-sequential, --targets, --dtype
  /// and --scratch-dir; `verb` ("prune", "quantise") goes into the help.
  void add_options(CLI::App* command, const std::string& verb);
  /// The calibration fields and targets of the sparsity options (method and pattern: defaults).
  moeprune::compression::ExpertSparsityOptions options() const;
};

/// How the experts of a checkpoint are scored: the options `score` and `prune` share.
struct ScoreArgs {
  std::string finetuned, pretrained, criterion = "router_norm_change";
  /// Calibration text or token ids, streamed through the model layer by layer.
  TokenSource calibration;
  int64_t samples = 8, seq_len = 512, batch_size = 4;
  /// safetensors of MoE-layer inputs (one tensor per layer prefix), for checkpoints moeprune
  /// cannot run whole.
  std::string moe_inputs;
  std::string dtype = "fp32";
  uint64_t seed = 0;
  /// Experts the plan prunes per layer, when known before scoring (naee searches that size).
  int64_t prune_count = 0;
  /// Set by the command to "<its output>.journal": calibration streamed through the model is
  /// journaled there after every decoder layer, and a rerun resumes from it. Empty: none.
  std::string journal_dir;

  void add_options(CLI::App* command, const moeprune::pruning::CriterionRegistry& registry);
};

struct ScoreResult {
  moeprune::pruning::ExpertScores scores;
  /// The run's journal, when it had one: remove() it once the command's output is written.
  std::shared_ptr<moeprune::lm::StreamJournal> journal;
  void finish() {
    if (journal) journal->remove();
  }
};

/// Scores every MoE layer of `finetuned` (args.finetuned, opened once by the command; keyed by
/// MoE-layer position) with hf::score_checkpoint, with a progress bar; resumes from
/// args.journal_dir when it holds a journal of the same run.
ScoreResult compute_scores(const ScoreArgs& args, const moeprune::hf::Source& finetuned,
                           const moeprune::pruning::CriterionRegistry& registry);

}  // namespace cli
