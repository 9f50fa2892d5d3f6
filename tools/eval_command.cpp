// moeprune eval: perplexity of a checkpoint on a text or token file, layer-streamed by default
// (one decoder layer in memory at a time), or with the model loaded whole (--in-memory).
#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/evaluation.h>
#include <moeprune/models/lm/streamed.h>

#include <fmt/core.h>
#include <torch/torch.h>

#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.h"

namespace cli {
namespace {

struct EvalArgs {
  std::string dir, json, dtype = "fp32";
  TokenSource source;
  int64_t context = 512, stride = 0, batch_size = 8, max_tokens = 0;
  bool in_memory = false;
};

int run_eval(const EvalArgs& args) {
  check_result_path("--json", args.json, {args.dir, args.source.path, args.source.tokenizer});
  int64_t text_bytes = 0;
  auto stream = read_token_stream(args.source, args.dir, &text_bytes);
  TORCH_CHECK(args.max_tokens == 0 || args.max_tokens >= 2,
              "--max-tokens should be 0 or >= 2, got ", args.max_tokens);
  const bool truncated = args.max_tokens > 0 && args.max_tokens < stream.size(0);
  if (truncated) stream = stream.narrow(0, 0, args.max_tokens);
  TORCH_CHECK(stream.size(0) >= 2, args.source.path, ": ", stream.size(0),
              " token; at least 2 are needed");
  const auto options = moeprune::lm::PerplexityOptions()
                           .context(args.context)
                           .stride(args.stride)
                           .batch_size(args.batch_size);
  const auto dtype = parse_dtype(args.dtype);
  const auto start = std::chrono::steady_clock::now();
  moeprune::lm::PerplexityResult result;
  std::shared_ptr<moeprune::lm::StreamJournal> journal;
  if (args.in_memory) {
    auto model = moeprune::lm::load_causal_lm(args.dir, moeprune::lm::LoadOptions().dtype(dtype));
    LazyBar bar("perplexity", "tokens");
    result = moeprune::lm::perplexity(model, stream, options, bar.callback());
    bar.finish();
  } else {
    const moeprune::lm::CheckpointLayers checkpoint(args.dir,
                                                    moeprune::lm::LoadOptions().dtype(dtype));
    // With --json the run is resumable: a journal beside it after every decoder layer.
    moeprune::lm::StreamOptions stream_options;
    if (!args.json.empty()) {
      const auto fingerprint =
          run_fingerprint({"eval", args.dtype, std::to_string(args.context),
                           std::to_string(args.stride), std::to_string(args.batch_size)},
                          stream, {args.dir});
      journal = std::make_shared<moeprune::lm::StreamJournal>(args.json + ".journal", fingerprint);
      if (journal->layers_done() > 0) {
        fmt::print("resuming after decoder layer {} of {} from {}\n", journal->layers_done(),
                   checkpoint.num_layers(), journal->directory());
      }
      stream_options.journal(journal);
    }
    LazyBar bar("layers", "layers");
    result = moeprune::lm::streamed_perplexity(checkpoint, stream, options, stream_options,
                                               bar.callback());
    bar.finish();
  }
  const double seconds = seconds_since(start);
  const bool per_byte = text_bytes > 0 && !truncated;
  const double bits_per_byte = per_byte ? result.nll_sum / std::log(2.0) / text_bytes : 0.0;
  fmt::print("{}: {} tokens scored, mean NLL {:.4f} nats, perplexity {:.3f}, {:.4f} bits/token",
             args.dir, result.tokens, result.mean_nll(), result.perplexity(),
             result.bits_per_token());
  if (per_byte) fmt::print(", {:.4f} bits/byte", bits_per_byte);
  fmt::print("\n{} in {:.1f} s ({:.0f} tokens/s); peak RSS {:.0f} MB\n",
             args.in_memory ? "in memory" : "layer-streamed", seconds, result.tokens / seconds,
             peak_rss_mb());
  if (!args.json.empty()) {
    nlohmann::json j{{"checkpoint", args.dir},
                     {"tokens_file", args.source.path},
                     {"tokens_scored", result.tokens},
                     {"nll_sum", result.nll_sum},
                     {"mean_nll", result.mean_nll()},
                     {"perplexity", result.perplexity()},
                     {"bits_per_token", result.bits_per_token()},
                     {"context", args.context},
                     {"stride", args.stride == 0 ? args.context : args.stride},
                     {"dtype", args.dtype},
                     {"mode", args.in_memory ? "in_memory" : "layer_streamed"},
                     {"seconds", seconds},
                     {"peak_rss_mb", peak_rss_mb()}};
    if (per_byte) {
      j["text_bytes"] = text_bytes;
      j["bits_per_byte"] = bits_per_byte;
    }
    write_file_atomically(args.json, j.dump(1) + "\n");
    if (journal) journal->remove();
  }
  return 0;
}

}  // namespace

Runner add_eval(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  auto* command = app.add_subcommand(
      "eval", "Perplexity of a checkpoint on a text or token file (one layer in memory at a time)");
  command->add_option("dir", args->dir, "Checkpoint folder")->required();
  command
      ->add_option("tokens", args->source.path,
                   "Text file (UTF-8, tokenized with the checkpoint's tokenizer) or token ids "
                   "(.ids: whitespace-separated)")
      ->required();
  command->add_option("--format", args->source.format, "auto, text or ids")
      ->check(CLI::IsMember({"auto", "text", "ids"}))
      ->capture_default_str();
  command->add_option("--tokenizer", args->source.tokenizer,
                      "Tokenizer folder, tokenizer.json or tokenizer.model (default: the "
                      "checkpoint's)");
  command->add_option("--context", args->context, "Tokens per window")->capture_default_str();
  command->add_option("--stride", args->stride, "Window step (0: the context)")
      ->capture_default_str();
  command->add_option("--batch-size", args->batch_size, "Windows per forward pass")
      ->capture_default_str();
  command->add_option("--max-tokens", args->max_tokens, "Only the first N tokens (0: all)")
      ->capture_default_str();
  command->add_option("--dtype", args->dtype, "fp32 or bf16")->capture_default_str();
  command->add_flag("--in-memory", args->in_memory, "Load the whole model instead of streaming");
  command->add_option("--json", args->json, "Write the results to this JSON file");
  return [command, args]() -> int {
    if (!*command) return -1;
    return run_eval(*args);
  };
}

}  // namespace cli
