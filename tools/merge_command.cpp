// moeprune merge: M-SMoE on a checkpoint. Calibration tokens stream through the model one layer
// at a time for each MoE layer's routing usage; the experts are grouped (same count per layer or
// a global budget), merged with frequency weights, and the checkpoint is written with the
// router's rows kept and every member holding its group's merged weights.
#include <moeprune/models/lm/streamed_merge.h>

#include <fmt/core.h>
#include <torch/torch.h>

#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.h"

namespace cli {
namespace {

struct MergeArgs {
  std::string checkpoint, out, json, similarity = "router-logits", dtype = "fp32";
  std::string scratch_dir = "/tmp";
  TokenSource calibration;
  int64_t samples = 8, seq_len = 512, batch_size = 4;
  int64_t groups_per_layer = -1, total_groups = -1;
  bool no_align = false;
};

int run_merge(const MergeArgs& args) {
  check_new_folder("--out", args.out);
  check_result_path("--json", args.json,
                    {args.checkpoint, args.calibration.path, args.calibration.tokenizer});
  TORCH_CHECK((args.groups_per_layer >= 1) != (args.total_groups >= 1),
              "give --groups-per-layer N (merged experts in every MoE layer) or --total-groups T "
              "(over all MoE layers, by usage frequency)");
  const auto start = std::chrono::steady_clock::now();
  const moeprune::lm::CheckpointLayers model(
      args.checkpoint, moeprune::lm::LoadOptions().dtype(parse_dtype(args.dtype)));
  const auto stream = read_token_stream(args.calibration, args.checkpoint);
  const auto sequences =
      calibration_sequences(stream, args.samples, args.seq_len, args.calibration.path);
  fmt::print("calibration: {} sequences of {} tokens from {}\n", args.samples, args.seq_len,
             args.calibration.path);
  // Resumable: a journal beside the output folder keeps the calibration pass after every decoder
  // layer and every merged MoE layer; a run started again with the same arguments goes on there.
  const auto fingerprint = run_fingerprint(
      {"merge", std::to_string(args.groups_per_layer), std::to_string(args.total_groups),
       args.similarity, args.no_align ? "no-align" : "align", args.dtype,
       std::to_string(args.batch_size)},
      sequences, {args.checkpoint});
  const auto journal =
      std::make_shared<moeprune::lm::StreamJournal>(args.out + ".journal", fingerprint);
  if (journal->layers_done() > 0) {
    fmt::print("resuming after decoder layer {} of {} from {}\n", journal->layers_done(),
               model.num_layers(), journal->directory());
  }
  LazyBar usage_bar("routing usage", "layers");
  const auto usage = moeprune::lm::streamed_expert_usage(
      model, sequences, args.batch_size,
      moeprune::lm::StreamOptions().scratch_dir(args.scratch_dir).journal(journal),
      usage_bar.callback());
  usage_bar.finish();

  moeprune::lm::MergeCheckpointOptions options;
  options.groups_per_layer(args.groups_per_layer)
      .total_groups(args.total_groups)
      .similarity(args.similarity == "weights"
                      ? moeprune::compression::MergeSimilarity::kWeights
                      : moeprune::compression::MergeSimilarity::kRouterLogits)
      .align(!args.no_align)
      .scratch_dir(args.scratch_dir)
      .journal(journal);
  LazyBar merge_bar("merging", "layers");
  LazyBar write_bar("writing", "MB");
  const auto write_progress = write_bar.callback();
  moeprune::hf::WriteOptions wo;
  wo.progress = [&](uint64_t done, uint64_t total) {
    merge_bar.finish();
    write_progress(static_cast<int64_t>(done >> 20), static_cast<int64_t>(total >> 20));
  };
  const auto result =
      moeprune::lm::merge_checkpoint(model, usage, args.out, options, wo, merge_bar.callback());
  merge_bar.finish();
  write_bar.finish();
  journal->remove();
  if (result.layers_from_journal > 0) {
    fmt::print("{} MoE layers merged by the interrupted run, taken from its journal\n",
               result.layers_from_journal);
  }

  fmt::print("{:<36} {:>7} {:>6} {:>8} {:>10}\n", "MoE layer", "experts", "groups", "largest",
             "dominant%");
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& ref : model.info().layers) {
    const auto& groups = result.groups.at(ref.index);
    const auto freq = usage.frequency.at(ref.index).to(torch::kDouble).contiguous();
    size_t largest = 0;
    double dominant = 0.0;
    for (const auto& g : groups) {
      largest = std::max(largest, g.size());
      dominant += freq[g.front()].item<double>();
    }
    fmt::print("{:<36} {:>7} {:>6} {:>8} {:>9.1f}%\n", ref.prefix, ref.num_experts, groups.size(),
               largest, 100.0 * dominant);
    layers.push_back({{"index", ref.index},
                      {"prefix", ref.prefix},
                      {"groups", groups},
                      {"frequency", std::vector<double>(freq.data_ptr<double>(),
                                                        freq.data_ptr<double>() + freq.numel())}});
  }
  const double seconds = seconds_since(start);
  fmt::print(
      "wrote {}: {:.1f} MB in {:.1f} s; expert tensors merged {}, copied {}; peak RSS {:.0f} MB\n",
      args.out, result.report.bytes_written / 1e6, seconds, result.report.tensors_merged,
      result.report.tensors_copied, peak_rss_mb());
  if (!args.json.empty()) {
    const nlohmann::json j{
        {"checkpoint", args.checkpoint},
        {"out", args.out},
        {"method", "m-smoe"},
        {"similarity", args.similarity},
        {"align", !args.no_align},
        {"calibration",
         {{"path", args.calibration.path}, {"samples", args.samples}, {"seq_len", args.seq_len}}},
        {"layers", layers},
        {"bytes_written", result.report.bytes_written},
        {"seconds", seconds},
        {"peak_rss_mb", peak_rss_mb()}};
    write_file_atomically(args.json, j.dump(1) + "\n");
    fmt::print("groups written to {}\n", args.json);
  }
  return 0;
}

}  // namespace

Runner add_merge(CLI::App& app) {
  auto args = std::make_shared<MergeArgs>();
  auto* command = app.add_subcommand(
      "merge", "Merge experts (M-SMoE, frequency-weighted) and write a new checkpoint folder");
  command->add_option("checkpoint", args->checkpoint, "Checkpoint folder")->required();
  add_calibration_options(command, args->calibration, args->samples, args->seq_len,
                          args->batch_size, "for the routing usage")
      ->required();
  command->add_option("--groups-per-layer", args->groups_per_layer,
                      "Merged experts in every MoE layer");
  command->add_option("--total-groups", args->total_groups,
                      "Instead: merged experts over all MoE layers, given to the most used "
                      "experts (M-SMoE's global budget)");
  command
      ->add_option("--similarity", args->similarity,
                   "How members choose their group: router-logits (M-SMoE's default) or weights")
      ->check(CLI::IsMember({"router-logits", "weights"}))
      ->capture_default_str();
  command->add_flag("--no-align", args->no_align,
                    "Average the members without aligning their neurons first");
  command->add_option("--dtype", args->dtype, "fp32 or bf16 (the calibration forward)")
      ->capture_default_str();
  command
      ->add_option("--scratch-dir", args->scratch_dir,
                   "Folder for spilled activations and merged weights")
      ->capture_default_str();
  command->add_option("--out", args->out, "Output folder (must not exist)")->required();
  command->add_option("--json", args->json, "Write the groups and frequencies to this file");
  return [command, args]() -> int {
    if (!*command) return -1;
    return run_merge(*args);
  };
}

}  // namespace cli
