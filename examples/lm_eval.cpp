// Perplexity of a token file under a Hugging Face MoE language model:
//   lm_eval MODEL_DIR TOKENS [--format ids|bytes] [--context 512] [--stride 256] [--dtype bf16]
#include "lm_common.h"

#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/evaluation.h>
#include <moeprune/train/progress_bar.h>

#include <fmt/format.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include <chrono>
#include <memory>
#include <string>

int main(int argc, char** argv) {
  CLI::App app{"Perplexity and bits per token of a token file (sliding window)"};
  std::string model_dir, tokens_path, format = "ids", dtype = "fp32";
  int64_t context = 512, stride = 0;
  app.add_option("model", model_dir, "checkpoint folder (config.json + safetensors)")->required();
  app.add_option("tokens", tokens_path, "token file")->required();
  app.add_option("--format", format, "ids (whitespace-separated) or bytes")->capture_default_str();
  app.add_option("--context", context, "tokens per window")->capture_default_str();
  app.add_option("--stride", stride, "window step (0: the context)")->capture_default_str();
  app.add_option("--dtype", dtype, "fp32 or bf16")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    const auto stream = examples::read_tokens(tokens_path, format);
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
    fmt::print(
        "tokens scored   {}\nmean NLL        {:.4f} nats\nperplexity      {:.3f}\n"
        "bits per token  {:.4f}\ntime            {:.2f} s ({:.0f} tokens/s)\n",
        result.tokens, result.mean_nll(), result.perplexity(), result.bits_per_token(), seconds,
        static_cast<double>(result.tokens) / seconds);
  } catch (const c10::Error& e) {
    fmt::print(stderr, "lm_eval: {}\n", e.what_without_backtrace());
    return 1;
  }
  return 0;
}
