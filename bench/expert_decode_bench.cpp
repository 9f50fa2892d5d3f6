// One SwiGLU expert at decode sizes (1-32 rows) in bf16 on the CPU: moeprune's ExpertBank (weights
// [in, out], its small-rows kernel) against the same expert as transformers builds it, three
// torch nn.Linear ([out, in], MixtralBlockSparseTop2MLP: w2(silu(w1 x) * w3 x)), in one run on
// the same weights, threads and dtype. Each call runs the next of enough experts (>= 600 MB) that
// the weights come from memory, not the cache, as in decoding a real model. Reports ms per call
// and the weights' bytes read per second (the product is memory-bound at these sizes). Results:
// bench/results/expert_decode_cpu.json.
#include "machine_info.h"

#include <moeprune/io/atomic_write.h>
#include <moeprune/layers/expert_bank.h>

#include <fmt/core.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace {

// Median seconds per call over `repeat` timed runs of `calls` calls, after a warm-up call.
template <typename F>
double seconds_per_call(F&& f, int repeat, int calls) {
  f();
  std::vector<double> runs;
  for (int r = 0; r < repeat; ++r) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) {
      f();
    }
    runs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() /
                   calls);
  }
  std::sort(runs.begin(), runs.end());
  return runs[runs.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"A bf16 SwiGLU expert at decode sizes: ExpertBank vs torch nn.Linear"};
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  int repeat = 5;
  std::vector<int64_t> rows{1, 2, 4, 8, 16, 32};
  std::string json_out = "bench/results/expert_decode_cpu.json";
  app.add_option("--threads", threads, "intra-op threads")->capture_default_str();
  app.add_option("--repeat", repeat, "timed runs per measurement (median)")->capture_default_str();
  app.add_option("--rows", rows, "rows (tokens routed to the expert)")->capture_default_str();
  app.add_option("--json", json_out, "result file")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  at::set_num_threads(threads);
  torch::manual_seed(0);
  torch::NoGradGuard no_grad;

  struct Shape {
    std::string name;
    int64_t d, f;
  };
  nlohmann::json results = nlohmann::json::array();
  fmt::print("{:<10} {:>4} {:>12} {:>12} {:>12} {:>12} {:>7}\n", "expert", "rows", "moeprune ms",
             "GB/s", "nn.Linear ms", "GB/s", "ratio");
  for (const auto& shape : {Shape{"mixtral", 4096, 14336}, Shape{"qwen3_moe", 2048, 768}}) {
    const double gigabytes = 3.0 * static_cast<double>(shape.d * shape.f) * 2.0 / 1e9;
    const int64_t experts = std::max<int64_t>(2, static_cast<int64_t>(0.6 / gigabytes) + 1);
    moeprune::ExpertBank bank(moeprune::ExpertBankOptions(experts, shape.d, shape.f)
                                  .kind(moeprune::ExpertKind::kGated)
                                  .activation(moeprune::ExpertActivation::kSilu)
                                  .bias(false));
    bank->to(torch::kBFloat16);
    // The peer holds the same weights in nn.Linear's orientation.
    std::vector<std::array<torch::Tensor, 3>> linear;
    for (int64_t e = 0; e < experts; ++e) {
      linear.push_back({bank->w1[e].t().contiguous(), bank->w3[e].t().contiguous(),
                        bank->w2[e].t().contiguous()});
    }
    for (const int64_t r : rows) {
      const auto x = torch::randn({r, shape.d}).to(torch::kBFloat16);
      int64_t next = 0;
      const double ours = seconds_per_call(
          [&] {
            std::vector<int64_t> counts(static_cast<size_t>(experts), 0);
            counts[static_cast<size_t>(next++ % experts)] = r;
            return bank->forward(x, counts);
          },
          repeat, static_cast<int>(experts));
      const double peer = seconds_per_call(
          [&] {
            namespace F = torch::nn::functional;
            const auto& [w1, w3, w2] = linear[static_cast<size_t>(next++ % experts)];
            return F::linear(torch::silu(F::linear(x, w1)) * F::linear(x, w3), w2);
          },
          repeat, static_cast<int>(experts));
      fmt::print("{:<10} {:>4} {:>12.2f} {:>12.2f} {:>12.2f} {:>12.2f} {:>6.2f}x\n", shape.name, r,
                 ours * 1e3, gigabytes / ours, peer * 1e3, gigabytes / peer, peer / ours);
      results.push_back({{"expert", shape.name},
                         {"d_model", shape.d},
                         {"hidden", shape.f},
                         {"experts_cycled", experts},
                         {"rows", r},
                         {"moeprune_ms", ours * 1e3},
                         {"moeprune_weight_gb_per_s", gigabytes / ours},
                         {"nn_linear_ms", peer * 1e3},
                         {"nn_linear_weight_gb_per_s", gigabytes / peer},
                         {"moeprune_speedup", peer / ours}});
    }
  }
  nlohmann::json out;
  out["machine"] = bench::machine_info();
  out["dtype"] = "bf16";
  out["threads"] = threads;
  out["results"] = results;
  moeprune::io::write_file_atomically(json_out, out.dump(2) + "\n");
  fmt::print("wrote {}\n", json_out);
  return 0;
}
