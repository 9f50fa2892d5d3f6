// Text generation with a Hugging Face MoE language model read from its checkpoint folder:
//   lm_generate MODEL_DIR --prompt-ids 1,2,3 [--max-new-tokens 32] [--temperature 0.8 --top-p 0.9]
//   lm_generate MODEL_DIR --prompt-bytes "Once upon"      (byte-level models: a byte is a token)
#include "lm_common.h"

#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/generation.h>

#include <fmt/format.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  CLI::App app{
      "Generates tokens with a Mixtral, Qwen-MoE, OLMoE, DeepSeek (MoE, V2, V3) or GLM-4.5 "
      "checkpoint"};
  std::string model_dir, prompt_ids, prompt_bytes, dtype = "fp32";
  moeprune::lm::GenerationOptions options;
  int64_t max_new = 32, eos = -1;
  double temperature = 0.0, top_p = 1.0;
  uint64_t seed = 0;
  app.add_option("model", model_dir, "checkpoint folder (config.json + safetensors)")->required();
  auto* ids = app.add_option("--prompt-ids", prompt_ids, "prompt token ids, e.g. 1,2,3");
  auto* bytes = app.add_option("--prompt-bytes", prompt_bytes, "prompt text, one token per byte");
  ids->excludes(bytes);
  app.add_option("--max-new-tokens", max_new, "tokens to generate")->capture_default_str();
  app.add_option("--temperature", temperature, "0: greedy; > 0: sample")->capture_default_str();
  app.add_option("--top-p", top_p, "nucleus sampling mass")->capture_default_str();
  app.add_option("--seed", seed, "sampling seed")->capture_default_str();
  app.add_option("--eos", eos, "stop at this token id (-1: never)")->capture_default_str();
  app.add_option("--dtype", dtype, "fp32 or bf16")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    TORCH_CHECK(!prompt_ids.empty() || !prompt_bytes.empty(),
                "give a prompt: --prompt-ids or --prompt-bytes");
    torch::Tensor prompt;
    if (!prompt_ids.empty()) {
      prompt = examples::parse_ids(prompt_ids);
    } else {
      std::vector<int64_t> v;
      for (const char c : prompt_bytes) {
        v.push_back(static_cast<unsigned char>(c));
      }
      prompt = torch::tensor(v, torch::kLong);
    }
    auto model = moeprune::lm::load_causal_lm(
        model_dir, moeprune::lm::LoadOptions().dtype(examples::parse_dtype(dtype)));
    fmt::print(stderr, "{}\n", examples::summary(*model));
    const bool as_bytes = !prompt_bytes.empty();
    if (as_bytes) {
      fmt::print("{}", prompt_bytes);
    }
    const auto start = std::chrono::steady_clock::now();
    const auto out = moeprune::lm::generate(model, prompt.unsqueeze(0),
                                            options.max_new_tokens(max_new)
                                                .temperature(temperature)
                                                .top_p(top_p)
                                                .seed(seed)
                                                .eos_token_id(eos),
                                            [&](const torch::Tensor& next) {
                                              const auto id = next[0].item<int64_t>();
                                              if (as_bytes) {
                                                fmt::print("{}", static_cast<char>(id & 0xff));
                                              } else {
                                                fmt::print("{} ", id);
                                              }
                                              std::fflush(stdout);
                                            });
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const auto generated = out.size(1) - prompt.size(0);
    fmt::print("\n");
    std::fflush(stdout);
    fmt::print(stderr, "{} tokens in {:.2f} s ({:.1f} tokens/s, prompt {} tokens)\n", generated,
               seconds, static_cast<double>(generated) / seconds, prompt.size(0));
  } catch (const c10::Error& e) {
    fmt::print(stderr, "lm_generate: {}\n", e.what_without_backtrace());
    return 1;
  }
  return 0;
}
