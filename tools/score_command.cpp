// moeprune score: per-expert scores of any criterion, to a table and JSON.
#include <moeprune/hf/scoring.h>
#include <moeprune/hf/source.h>
#include <moeprune/models/lm/streamed.h>

#include <fmt/core.h>
#include <torch/torch.h>

#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "commands.h"

namespace cli {

void ScoreArgs::add_options(CLI::App* command,
                            const moeprune::pruning::CriterionRegistry& registry) {
  std::string names;
  for (const auto& n : registry.names()) names += (names.empty() ? "" : ", ") + n;
  command->add_option("--finetuned", finetuned, "Fine-tuned checkpoint folder (the one scored)")
      ->required();
  command->add_option("--pretrained", pretrained,
                      "Pre-trained checkpoint folder (router_norm_change, "
                      "neuron_magnitude_change)");
  command->add_option("--criterion", criterion, "Criterion: " + names)->capture_default_str();
  add_calibration_options(
      command, calibration, samples, seq_len, batch_size,
      "for criteria that need data (importance, frequency, reap); run through the model one "
      "layer at a time");
  command->add_option("--moe-inputs", moe_inputs,
                      "Instead of --calibration, for checkpoints moeprune cannot run whole "
                      "(Switch): safetensors of each MoE layer's input hidden states, one tensor "
                      "[..., d] per layer prefix");
  command->add_option("--dtype", dtype, "fp32 or bf16 (the model's computation)")
      ->capture_default_str();
  command->add_option("--seed", seed, "Seed of the random criterion")->capture_default_str();
}

ScoreResult compute_scores(const ScoreArgs& args, const moeprune::hf::Source& finetuned,
                           const moeprune::pruning::CriterionRegistry& registry) {
  ScoreResult result;
  nlohmann::json journal_scores = nlohmann::json::object();
  const auto criterion = registry.create(args.criterion);
  if (args.prune_count > 0) criterion->set_prune_count(args.prune_count);
  std::optional<moeprune::hf::Source> pretrained;
  if (criterion->needs_pretrained()) {
    TORCH_CHECK(!args.pretrained.empty(), "criterion ", args.criterion,
                " compares with the pre-trained model: give --pretrained");
    pretrained.emplace(args.pretrained);
  }
  moeprune::hf::ScoringOptions options;
  std::unique_ptr<moeprune::hf::LayerInputs> inputs;
  if (criterion->needs_data() && !args.calibration.path.empty()) {
    TORCH_CHECK(args.moe_inputs.empty(), "give --calibration or --moe-inputs, not both");
    const auto stream = read_token_stream(args.calibration, args.finetuned);
    const auto sequences =
        calibration_sequences(stream, args.samples, args.seq_len, args.calibration.path);
    fmt::print("calibration: {} sequences of {} tokens from {}\n", args.samples, args.seq_len,
               args.calibration.path);
    // The model runs in --dtype; layers read besides (the pre-trained ones) too.
    options.dtype = parse_dtype(args.dtype);
    moeprune::lm::StreamOptions streaming;
    if (!args.journal_dir.empty()) {
      const auto fingerprint =
          run_fingerprint({"score", args.criterion, args.dtype, std::to_string(args.batch_size),
                           std::to_string(args.seed), std::to_string(args.prune_count)},
                          sequences, {args.finetuned, args.pretrained});
      result.journal = std::make_shared<moeprune::lm::StreamJournal>(args.journal_dir, fingerprint);
      if (result.journal->layers_done() > 0) {
        // The scores of the MoE layers before the saved activations, as they were computed.
        journal_scores = nlohmann::json::parse(result.journal->state());
        for (const auto& [index, values] : journal_scores.items()) {
          options.done[std::stoll(index)] =
              torch::tensor(values.get<std::vector<double>>(), torch::kDouble);
        }
        fmt::print("resuming after decoder layer {} ({} MoE layers scored) from {}\n",
                   result.journal->layers_done(), options.done.size(), args.journal_dir);
      }
      streaming.journal(result.journal).journal_state([&journal_scores] {
        return journal_scores.dump();
      });
      options.on_scored = [&journal_scores](int64_t index, const torch::Tensor& s) {
        const auto d = s.to(torch::kDouble).contiguous();
        journal_scores[std::to_string(index)] =
            std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
      };
    }
    inputs = std::make_unique<moeprune::lm::StreamedCalibration>(sequences, args.batch_size,
                                                                 options.dtype, streaming);
  } else if (criterion->needs_data()) {
    TORCH_CHECK(!args.moe_inputs.empty(), "criterion ", args.criterion,
                " needs calibration data: give --calibration FILE (text, or token ids in a .ids "
                "file)");
    inputs = std::make_unique<moeprune::hf::HiddenStateFile>(args.moe_inputs);
  }
  LazyBar bar("scoring", "layers");
  options.pretrained = pretrained ? &*pretrained : nullptr;
  options.inputs = inputs.get();
  options.seed = args.seed;
  options.progress = bar.callback();
  result.scores = moeprune::hf::score_checkpoint(finetuned, *criterion, options);
  bar.finish();
  return result;
}

Runner add_score(CLI::App& app, const moeprune::pruning::CriterionRegistry& registry) {
  auto args = std::make_shared<ScoreArgs>();
  auto out = std::make_shared<std::string>();
  auto* command = app.add_subcommand("score", "Score every expert of a checkpoint; table + JSON");
  args->add_options(command, registry);
  command->add_option("--out", *out, "Write the scores to this JSON file");
  return [command, args, out, &registry]() -> int {
    if (!*command) return -1;
    const auto& s = *args;
    check_result_path(
        "--out", *out,
        {s.finetuned, s.pretrained, s.calibration.path, s.calibration.tokenizer, s.moe_inputs});
    const auto start = std::chrono::steady_clock::now();
    const moeprune::hf::Source finetuned(args->finetuned);
    auto score_args = *args;
    if (!out->empty()) score_args.journal_dir = *out + ".journal";
    auto result = compute_scores(score_args, finetuned, registry);
    const auto& scores = result.scores;
    const auto& info = finetuned.info();
    nlohmann::json layers = nlohmann::json::array();
    fmt::print("{:<36} {:>7} {:>12} {:>12}  lowest first\n", "MoE layer", "experts", "min", "max");
    for (const auto& ref : info.layers) {
      const auto s = scores.at(ref.index).to(torch::kDouble).contiguous();
      std::vector<double> values(s.data_ptr<double>(), s.data_ptr<double>() + s.numel());
      std::vector<int64_t> order(values.size());
      for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return values[a] < values[b]; });
      std::string lowest;
      for (size_t i = 0; i < std::min<size_t>(order.size(), 6); ++i) {
        lowest += (i ? " " : "") + std::to_string(order[i]);
      }
      fmt::print("{:<36} {:>7} {:>12.5g} {:>12.5g}  {}{}\n", ref.prefix, values.size(),
                 values[order.front()], values[order.back()], lowest,
                 order.size() > 6 ? " ..." : "");
      layers.push_back({{"index", ref.index}, {"prefix", ref.prefix}, {"scores", values}});
    }
    fmt::print("{} MoE layers scored by {} in {:.1f} s; peak RSS {:.0f} MB\n", info.layers.size(),
               args->criterion, seconds_since(start), peak_rss_mb());
    if (!out->empty()) {
      nlohmann::json j{{"criterion", args->criterion},
                       {"finetuned", args->finetuned},
                       {"pretrained", args->pretrained},
                       {"seed", args->seed},
                       {"layers", layers}};
      if (!args->calibration.path.empty()) {
        j["calibration"] = {{"path", args->calibration.path},
                            {"samples", args->samples},
                            {"seq_len", args->seq_len}};
      }
      write_file_atomically(*out, j.dump(1) + "\n");
      result.finish();
      fmt::print("scores written to {}\n", *out);
    }
    return 0;
  };
}

}  // namespace cli
