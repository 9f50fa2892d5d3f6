// moeprune sparsify: Wanda, SparseGPT or magnitude pruning inside every expert of a checkpoint
// (the Unified seed's Expert Slimming), and with --targets in its attention, shared experts and
// dense MLPs. Calibration tokens stream through the model one decoder layer at a time; each
// expert is pruned on the tokens routed to it (or on all tokens), each dense layer on its own
// inputs, and the checkpoint is written in its own format with exact zeros, so every tool loads
// it.
#include <moeprune/models/lm/streamed_sparsity.h>

#include <fmt/core.h>
#include <torch/torch.h>

#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "slimming_table.h"

namespace cli {
namespace {

namespace cm = moeprune::compression;

struct SparsifyArgs {
  std::string checkpoint, out, json, method = "wanda", sparsity, nm, format = "dense";
  TokenSource calibration;
  SlimmingArgs slimming;
  int64_t samples = 8, seq_len = 512, batch_size = 4;
  std::vector<int64_t> layers;
};

cm::SparsityPattern pattern_of(const SparsifyArgs& args) {
  TORCH_CHECK(args.sparsity.empty() != args.nm.empty(),
              "give --sparsity F (a fraction of every row, e.g. 0.5) or --nm N:M (e.g. 2:4)");
  if (!args.nm.empty()) {
    TORCH_CHECK(args.nm.find(':') != std::string::npos, "--nm ", args.nm, ": give N:M, e.g. 2:4");
    return cm::SparsityPattern::parse(args.nm);
  }
  TORCH_CHECK(args.sparsity.find(':') == std::string::npos, "--sparsity ", args.sparsity,
              ": give a fraction; N:M patterns go to --nm");
  return cm::SparsityPattern::parse(args.sparsity);
}

int run_sparsify(const SparsifyArgs& args) {
  check_new_folder("--out", args.out);
  check_result_path("--json", args.json,
                    {args.checkpoint, args.calibration.path, args.calibration.tokenizer});
  auto options = args.slimming.options();
  options.method(cm::parse_sparsity_method(args.method))
      .pattern(pattern_of(args))
      .layers(args.layers);
  const bool magnitude = options.method() == cm::SparsityMethod::kMagnitude;
  TORCH_CHECK(magnitude || !args.calibration.path.empty(), "--method ", args.method,
              " needs --calibration (text or token ids)");
  const auto start = std::chrono::steady_clock::now();
  const moeprune::lm::CheckpointLayers model(
      args.checkpoint, moeprune::lm::LoadOptions().dtype(parse_dtype(args.slimming.dtype)));
  torch::Tensor sequences;
  if (!args.calibration.path.empty()) {
    const auto stream = read_token_stream(args.calibration, args.checkpoint);
    sequences = calibration_sequences(stream, args.samples, args.seq_len, args.calibration.path);
    // How the experts are calibrated; dense layers always see every token that reaches them.
    const std::string how = !options.targets().experts ? "each layer on every token"
                            : args.slimming.calibration_mode == "all"
                                ? "every expert on every token"
                                : "each expert on the tokens routed to it";
    fmt::print("calibration: {} sequences of {} tokens from {} ({})\n", args.samples, args.seq_len,
               args.calibration.path, how);
  }
  const auto& targets = options.targets();
  if (targets.experts) {
    fmt::print("{} at {} inside the experts of {} MoE layers\n", args.method,
               options.pattern().describe(),
               args.layers.empty() ? model.info().layers.size() : args.layers.size());
  }
  if (targets.everything) {
    fmt::print(
        "{} at {} in every dense linear layer the model has (attention, shared experts, "
        "dense MLPs; not the routers or the head) of {} decoder layers\n",
        args.method, options.pattern().describe(), model.num_layers());
  } else if (targets.beyond_experts()) {
    std::string roles;
    for (const auto role : {moeprune::LinearRole::kAttention, moeprune::LinearRole::kSharedExpert,
                            moeprune::LinearRole::kDenseMLP}) {
      if (targets.wants(role)) roles += (roles.empty() ? "" : ", ") + moeprune::to_string(role);
    }
    fmt::print("{} at {} in the {} layers of {} decoder layers\n", args.method,
               options.pattern().describe(), roles, model.num_layers());
  }

  SlimmingTable table("sparsity");
  const auto on_layer = [&](const cm::LayerSparsityReport& r) { table.layer(r); };
  const auto on_linears = [&](const cm::LinearSparsityReport& r) { table.linears(r); };
  LazyBar write_bar("writing", "MB");
  const auto write_progress = write_bar.callback();
  moeprune::hf::WriteOptions wo;
  wo.sparse_format = moeprune::hf::parse_sparse_format(args.format);
  wo.progress = [&](uint64_t done, uint64_t total) {
    write_progress(static_cast<int64_t>(done >> 20), static_cast<int64_t>(total >> 20));
  };
  const auto result = moeprune::lm::sparsify_checkpoint(
      model, sequences, args.out,
      moeprune::lm::SparsifyCheckpointOptions()
          .sparsity(options)
          .batch_size(args.batch_size)
          .stream(moeprune::lm::StreamOptions().scratch_dir(args.slimming.scratch_dir)),
      wo, on_layer, on_linears);
  write_bar.finish();
  int64_t weights = 0, zeros = 0;
  for (const auto& r : result.layers) {
    weights += r.weights;
    zeros += r.zeros;
  }
  for (const auto& r : result.linears) {
    weights += r.weights;
    zeros += r.zeros;
  }
  const double seconds = seconds_since(start);
  const auto what = targets.describe() == "experts" ? std::string("expert")
                                                    : "targeted (" + targets.describe() + ")";
  fmt::print(
      "wrote {}: {:.1f} MB in {:.1f} s; {:.2f}% of {} {} weights are zero; tensors rewritten {}, "
      "copied {}; peak RSS {:.0f} MB\n",
      args.out, result.report.bytes_written / 1e6, seconds,
      weights > 0 ? 100.0 * static_cast<double>(zeros) / static_cast<double>(weights) : 0.0,
      weights, what, result.report.tensors_merged, result.report.tensors_copied, peak_rss_mb());
  if (wo.sparse_format == moeprune::hf::SparseFormat::kCompressedTensors24) {
    fmt::print(
        "sparse weights stored as compressed-tensors sparse-24-bitmask: transformers 4.x with "
        "compressed-tensors <= 0.14.0.1 loads the folder; moeprune reads it but writes from dense "
        "folders only\n");
  }
  if (!args.json.empty()) {
    nlohmann::json j{{"checkpoint", args.checkpoint},
                     {"out", args.out},
                     {"record", nlohmann::json::parse(moeprune::lm::sparsity_record(options))},
                     {"layers", table.layers()},
                     {"linears", table.linear_groups()},
                     {"weights", weights},
                     {"zeros", zeros},
                     {"format", moeprune::hf::to_string(wo.sparse_format)},
                     {"bytes_written", result.report.bytes_written},
                     {"seconds", seconds},
                     {"peak_rss_mb", peak_rss_mb()}};
    if (!args.calibration.path.empty()) {
      j["calibration"] = {
          {"path", args.calibration.path}, {"samples", args.samples}, {"seq_len", args.seq_len}};
    }
    write_file_atomically(args.json, j.dump(1) + "\n");
    fmt::print("per-layer figures written to {}\n", args.json);
  }
  return 0;
}

}  // namespace

Runner add_sparsify(CLI::App& app) {
  auto args = std::make_shared<SparsifyArgs>();
  auto* command = app.add_subcommand(
      "sparsify",
      "Prune weights inside the experts (Wanda, SparseGPT, magnitude; a fraction or N:M), and "
      "with --targets in attention, shared experts and dense MLPs, and write a new checkpoint "
      "folder with exact zeros");
  command->add_option("checkpoint", args->checkpoint, "Checkpoint folder")->required();
  command->add_option("--method", args->method, "wanda, sparsegpt or magnitude")
      ->check(CLI::IsMember({"wanda", "sparsegpt", "magnitude"}))
      ->capture_default_str();
  command->add_option("--sparsity", args->sparsity,
                      "Fraction of every row to prune, in (0, 1), e.g. 0.5");
  command->add_option("--nm", args->nm, "Instead: keep N of every M inputs of a row, e.g. 2:4");
  add_calibration_options(command, args->calibration, args->samples, args->seq_len,
                          args->batch_size,
                          "for the experts' statistics (not needed for magnitude)");
  args->slimming.add_options(command, "prune");
  command->add_option("--layers", args->layers,
                      "Only these MoE layers (by index; with --targets experts only)");
  command
      ->add_option("--format", args->format,
                   "dense: the source's format with exact zeros, every tool loads it; "
                   "compressed-tensors: 2:4 experts as sparse-24-bitmask (about 56% of the bytes; "
                   "transformers 4.x with compressed-tensors <= 0.14.0.1 loads it)")
      ->check(CLI::IsMember({"dense", "compressed-tensors"}))
      ->capture_default_str();
  command->add_option("--out", args->out, "Output folder (must not exist)")->required();
  command->add_option("--json", args->json, "Write the per-layer figures to this file");
  return [command, args]() -> int {
    if (!*command) return -1;
    return run_sparsify(*args);
  };
}

}  // namespace cli
