// Perplexity (and bits per byte for byte-level models) of a Hugging Face MoE language model:
//   lm_eval MODEL_DIR TOKENS [--format ids|bytes] [--context 512] [--stride 256] [--dtype bf16]
//   lm_eval MODEL_DIR --fortunes es [--max-tokens N] [--json OUT.json] [--save-tokens IDS]
// --fortunes evaluates the test split of Debian's fortune cookies in that language as byte tokens
// (the language demo's data, <moeprune/train/text_corpus.h>) and reports bits per byte.
#include "lm_common.h"

#include <moeprune/io/atomic_write.h>
#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/evaluation.h>
#include <moeprune/train/progress_bar.h>
#include <moeprune/train/text_corpus.h>

#include <fmt/format.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

int main(int argc, char** argv) {
  CLI::App app{"Perplexity, bits per token and bits per byte of a token stream (sliding window)"};
  std::string model_dir, tokens_path, format = "ids", dtype = "fp32", fortunes, json_path,
                                      save_tokens;
  int64_t context = 512, stride = 0, max_tokens = 0;
  app.add_option("model", model_dir, "checkpoint folder (config.json + safetensors)")->required();
  auto* tokens_opt = app.add_option("tokens", tokens_path, "token file");
  app.add_option("--format", format, "ids (whitespace-separated) or bytes")->capture_default_str();
  auto* fortunes_opt = app.add_option(
      "--fortunes", fortunes,
      "Instead of a token file: the test split of Debian's fortunes in this language (en, de, "
      "es, it, pt) as byte tokens");
  tokens_opt->excludes(fortunes_opt);
  app.add_option("--max-tokens", max_tokens, "Only the first N tokens (0: all)");
  app.add_option("--context", context, "tokens per window")->capture_default_str();
  app.add_option("--stride", stride, "window step (0: the context)")->capture_default_str();
  app.add_option("--dtype", dtype, "fp32 or bf16")->capture_default_str();
  app.add_option("--json", json_path, "Write the results to this JSON file");
  app.add_option("--save-tokens", save_tokens,
                 "Write the evaluated token ids to this file (whitespace-separated)");
  CLI11_PARSE(app, argc, argv);
  try {
    TORCH_CHECK(!tokens_path.empty() || !fortunes.empty(),
                "give a token file or --fortunes LANGUAGE");
    auto stream = fortunes.empty()
                      ? examples::read_tokens(tokens_path, format)
                      : moeprune::data::byte_tokens(moeprune::data::load_fortunes(fortunes).test);
    TORCH_CHECK(max_tokens == 0 || max_tokens >= 2, "--max-tokens should be 0 or >= 2, got ",
                max_tokens);
    if (max_tokens > 0 && max_tokens < stream.size(0)) {
      stream = stream.narrow(0, 0, max_tokens);
    }
    if (!save_tokens.empty()) {
      std::ofstream out(save_tokens);
      const auto* ids = stream.data_ptr<int64_t>();
      for (int64_t i = 0; i < stream.size(0); ++i) out << ids[i] << (i % 32 == 31 ? '\n' : ' ');
      out << '\n';
      TORCH_CHECK(out.good(), save_tokens, ": write failed");
    }
    auto model = moeprune::lm::load_causal_lm(
        model_dir, moeprune::lm::LoadOptions().dtype(examples::parse_dtype(dtype)));
    fmt::print("{}\n", examples::summary(*model));
    std::unique_ptr<moeprune::ProgressBar> bar;
    const auto start = std::chrono::steady_clock::now();
    const auto result = moeprune::lm::perplexity(
        model, stream, moeprune::lm::PerplexityOptions().context(context).stride(stride),
        [&](int64_t done, int64_t total) {
          if (!bar) {
            bar = std::make_unique<moeprune::ProgressBar>(total, "perplexity", "token");
          }
          bar->update(done);
        });
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print(stderr, "\n");
    // Bits per byte when the ids are bytes (a byte-level model: ids < 256 are bytes).
    const bool byte_level = !fortunes.empty() || format == "bytes";
    const double bpb =
        byte_level ? moeprune::data::bits_per_byte(result.nll_sum, stream.slice(0, 1)) : 0.0;
    fmt::print(
        "tokens scored   {}\nmean NLL        {:.4f} nats\nperplexity      {:.3f}\n"
        "bits per token  {:.4f}\n",
        result.tokens, result.mean_nll(), result.perplexity(), result.bits_per_token());
    if (byte_level) {
      fmt::print("bits per byte   {:.4f}\n", bpb);
    }
    fmt::print("time            {:.2f} s ({:.0f} tokens/s)\n", seconds,
               static_cast<double>(result.tokens) / seconds);
    if (!json_path.empty()) {
      moeprune::io::write_file_atomically(
          json_path,
          fmt::format("{{\"tokens\": {}, \"nll_sum\": {:.17g}, \"mean_nll\": {:.17g}, "
                      "\"perplexity\": {:.17g}, \"bits_per_token\": {:.17g}, "
                      "\"bits_per_byte\": {}, \"context\": {}, \"stride\": {}, "
                      "\"seconds\": {:.3f}}}\n",
                      result.tokens, result.nll_sum, result.mean_nll(), result.perplexity(),
                      result.bits_per_token(), byte_level ? fmt::format("{:.17g}", bpb) : "null",
                      context, stride, seconds));
    }
  } catch (const c10::Error& e) {
    fmt::print(stderr, "lm_eval: {}\n", e.what_without_backtrace());
    return 1;
  }
  return 0;
}
