// Whole language models on the CPU against transformers' own models, in one run: prefill
// tokens/s (one sequence of --prefill tokens, logits of every position) and decode tokens/s
// (greedy generation of --decode-tokens after a --prompt-token prompt, batch 1 and 8, prompt
// included as transformers' generate includes it), plus load time and memory after load against
// the checkpoint's size.
//
// For each shape (Mixtral-8x7B's and Qwen3-30B-A3B's widths with --layers decoder layers and
// random weights) it builds the model in bf16, saves it as a Hugging Face folder, loads it back
// with load_causal_lm, measures, then runs bench/lm_transformers_bench.py on the same folder,
// threads and dtype (scripts/hf_python). Results: bench/results/lm_cpu.json, with the ratios.
#include "machine_info.h"

#include <moeprune/io/atomic_write.h>
#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/generation.h>

#include <c10/core/DefaultDtype.h>
#include <fmt/core.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

using moeprune::lm::AttentionOptions;
using moeprune::lm::CausalLMOptions;

double rss_mb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      return std::stod(line.substr(6)) / 1024.0;
    }
  }
  return 0.0;
}

// The token ids bench/lm_transformers_bench.py makes: x <- (1103515245 x + 12345) mod 2^31.
torch::Tensor tokens(int64_t batch, int64_t length, int64_t vocab, int64_t seed) {
  std::vector<int64_t> out;
  uint64_t x = static_cast<uint64_t>(seed);
  for (int64_t i = 0; i < batch * length; ++i) {
    x = (1103515245ULL * x + 12345ULL) % (1ULL << 31);
    out.push_back(static_cast<int64_t>(x % static_cast<uint64_t>(vocab)));
  }
  return torch::tensor(out, torch::kLong).view({batch, length});
}

CausalLMOptions shape(const std::string& name, int64_t layers) {
  if (name == "mixtral") {  // Mixtral-8x7B-v0.1 config.json
    auto moe = moeprune::MoELayerOptions::preset("top_k_gated", 4096, 14336, 8);
    return CausalLMOptions(32000, 4096, layers,
                           AttentionOptions(4096, 32, 8, 128).rms_norm_eps(1e-5).rope_theta(1e6))
        .model_type("mixtral")
        .rms_norm_eps(1e-5)
        .moe_layers(std::vector<bool>(static_cast<size_t>(layers), true))
        .moe(moe);
  }
  // Qwen3-30B-A3B config.json: 128 experts of width 768, top-8 renormalised, q/k norm per head.
  auto moe = moeprune::MoELayerOptions::preset("top_k_gated", 2048, 768, 128);
  moe.routing().k(8);
  return CausalLMOptions(151936, 2048, layers,
                         AttentionOptions(2048, 32, 4, 128)
                             .qk_norm(moeprune::lm::QKNorm::kPerHead)
                             .rope_theta(1e6))
      .model_type("qwen3_moe")
      .intermediate_size(6144)
      .moe_layers(std::vector<bool>(static_cast<size_t>(layers), true))
      .moe(moe);
}

template <typename F>
double median_seconds(int repeat, F&& f) {
  std::vector<double> t;
  for (int i = 0; i < repeat; ++i) {
    const auto start = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

uint64_t folder_bytes(const std::string& dir) {
  uint64_t total = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    total += std::filesystem::file_size(e.path());
  }
  return total;
}

std::string run_capture(const std::string& command) {
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  TORCH_CHECK(pipe != nullptr, "cannot run: ", command);
  std::string out;
  std::array<char, 4096> buf{};
  while (fgets(buf.data(), buf.size(), pipe.get()) != nullptr) {
    out += buf.data();
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Prefill and decode tokens/s of moeprune's language models vs transformers"};
  std::vector<std::string> models{"mixtral", "qwen3_moe"};
  int64_t layers = 2, prefill = 512, decode_tokens = 16, prompt = 32;
  std::vector<int64_t> batches{1, 8};
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  int repeat = 3;
  bool with_transformers = true;
  std::string work = "/tmp/moeprune-lm-bench", json_out = "bench/results/lm_cpu.json",
              transformers_version = "4.57.6";
  app.add_option("--models", models, "shapes: mixtral, qwen3_moe")->capture_default_str();
  app.add_option("--layers", layers, "decoder layers (real widths)")->capture_default_str();
  app.add_option("--prefill", prefill, "prefill tokens")->capture_default_str();
  app.add_option("--decode-tokens", decode_tokens, "tokens generated")->capture_default_str();
  app.add_option("--prompt", prompt, "prompt tokens before decoding")->capture_default_str();
  app.add_option("--batches", batches, "decode batch sizes")->capture_default_str();
  app.add_option("--threads", threads, "intra-op threads (both sides)")->capture_default_str();
  app.add_option("--repeat", repeat, "runs per measurement (median)")->capture_default_str();
  app.add_option("--work-dir", work, "where the checkpoints are written")->capture_default_str();
  app.add_option("--json", json_out, "result file")->capture_default_str();
  app.add_option("--transformers", transformers_version, "transformers version of the peer")
      ->capture_default_str();
  app.add_flag("!--no-transformers", with_transformers, "skip the transformers side");
  CLI11_PARSE(app, argc, argv);
  torch::set_num_threads(threads);
  nlohmann::json result{{"machine", bench::machine_info()},
                        {"threads", threads},
                        {"dtype", "bf16"},
                        {"layers", layers},
                        {"prefill_tokens", prefill},
                        {"decode_tokens", decode_tokens},
                        {"prompt_tokens", prompt},
                        {"repeat", repeat},
                        {"weights", "random"},
                        {"models", nlohmann::json::object()}};
  for (const auto& name : models) {
    const auto dir = work + "/" + name;
    if (!std::filesystem::exists(dir + "/config.json")) {
      fmt::print("building a random {} ({} layers, bf16) in {}\n", name, layers, dir);
      const auto old = c10::get_default_dtype();
      c10::set_default_dtype(c10::scalarTypeToTypeMeta(torch::kBFloat16));
      torch::manual_seed(0);
      moeprune::lm::CausalLM model(shape(name, layers));
      c10::set_default_dtype(old);
      std::filesystem::create_directories(work);
      moeprune::lm::save_causal_lm(model, dir);
    }
    nlohmann::json r;
    r["checkpoint_mb"] = static_cast<double>(folder_bytes(dir)) / 1e6;
    const double rss_before = rss_mb();
    const auto start = std::chrono::steady_clock::now();
    auto model =
        moeprune::lm::load_causal_lm(dir, moeprune::lm::LoadOptions().dtype(torch::kBFloat16));
    r["load_seconds"] =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    r["rss_growth_after_load_mb"] = rss_mb() - rss_before;
    model->eval();
    const int64_t vocab = model->options.vocab_size();
    {
      torch::NoGradGuard no_grad;
      const auto ids = tokens(1, prefill, vocab, 1);
      model->forward(ids.narrow(1, 0, 16));  // warm-up
      const double s = median_seconds(repeat, [&] { model->forward(ids); });
      r["prefill_tokens_per_s"] = static_cast<double>(prefill) / s;
    }
    for (const auto b : batches) {
      const auto p = tokens(b, prompt, vocab, 2);
      const auto options = moeprune::lm::GenerationOptions().max_new_tokens(decode_tokens);
      const double s = median_seconds(repeat, [&] { moeprune::lm::generate(model, p, options); });
      r["decode_b" + std::to_string(b) + "_tokens_per_s"] =
          static_cast<double>(b * decode_tokens) / s;
    }
    fmt::print("moeprune {}: {}\n", name, r.dump());
    nlohmann::json entry{{"moeprune", r}};
    model = nullptr;
    if (with_transformers) {
      std::string b;
      for (const auto x : batches) {
        b += (b.empty() ? "" : ",") + std::to_string(x);
      }
      const auto cmd = fmt::format(
          "scripts/hf_python {} bench/lm_transformers_bench.py {} --threads {} --dtype bf16 "
          "--prefill {} --decode-batches {} --decode-tokens {} --prompt {} --repeat {}",
          transformers_version, dir, threads, prefill, b, decode_tokens, prompt, repeat);
      const auto out = run_capture(cmd);
      // The script prints one JSON line last (pip may talk before it on a first install).
      const auto end = out.find_last_not_of("\n");
      TORCH_CHECK(end != std::string::npos, "no output from: ", cmd);
      const auto newline = out.rfind('\n', end);
      const auto begin = newline == std::string::npos ? 0 : newline + 1;
      const auto last = out.substr(begin, end + 1 - begin);
      auto t = nlohmann::json::parse(last);
      fmt::print("transformers {}: {}\n", name, t.dump());
      entry["transformers"] = t;
      nlohmann::json ratio;
      for (const auto& key : r.items()) {
        if (key.key().find("tokens_per_s") != std::string::npos && t.contains(key.key())) {
          ratio[key.key()] = key.value().get<double>() / t[key.key()].get<double>();
        }
      }
      entry["moeprune_over_transformers"] = ratio;
      fmt::print("ratio {}: {}\n", name, ratio.dump());
    }
    result["models"][name] = entry;
  }
  moeprune::io::write_file_atomically(json_out, result.dump(2) + "\n");
  fmt::print("wrote {}\n", json_out);
  return 0;
}
