// GPU benchmark of routing metadata, dispatch and combine against a device-to-device copy of
// the same bytes, at Mixtral, V-MoE-B and decoding-size shapes, with uniform, Zipf and
// single-expert routing (bf16). Writes bench/results/cuda_ops.json (the machine block names the
// host; add the GPU with nvidia-smi). Exits with a message (and writes nothing) when no GPU is
// present.
#include "machine_info.h"

#include <moeprune/moeprune.h>

#include <fmt/format.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

namespace {

int reps = 20;

double time_gpu(const std::function<void()>& body) {
  body();
  torch::cuda::synchronize();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    body();
    torch::cuda::synchronize();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

torch::Tensor logits_for(const std::string& routing, int64_t T, int64_t E) {
  auto logits = torch::randn({T, E}, torch::kCUDA);
  if (routing == "zipf") {
    // Expert e is chosen with odds ~ 1 / (e + 1)^1.2.
    logits += torch::arange(1, E + 1, torch::kCUDA).to(torch::kFloat).log().mul(-1.2 * 4);
  } else if (routing == "single") {
    logits.select(1, 0).add_(100.0);
  }
  return logits;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moeprune GPU benchmark: routing metadata, dispatch, combine vs device copy."};
  std::string out;
  app.add_option("--out", out, "JSON file (default bench/results/cuda_ops.json)");
  app.add_option("--reps", reps, "Timed repetitions (median)")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  if (!torch::cuda::is_available()) {
    fmt::print("no CUDA device: nothing measured\n");
    return 0;
  }
  struct Shape {
    std::string name;
    int64_t d, E, k, T;
  };
  std::vector<Shape> shapes = {{"mixtral", 4096, 8, 2, 4096},
                               {"mixtral", 4096, 8, 2, 16384},
                               {"mixtral", 4096, 8, 2, 65536},
                               {"vmoe_b", 768, 8, 2, 16384},
                               {"vmoe_b", 768, 32, 2, 16384}};
  for (const int64_t t : {1, 4, 16, 64, 256}) {
    shapes.push_back({"decode", 4096, 8, 2, t});
  }
  std::string gpu_name = "unknown";
  if (FILE* smi = popen("nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null", "r")) {
    char buf[256] = {};
    if (std::fgets(buf, sizeof(buf), smi) != nullptr) {
      gpu_name = buf;
      gpu_name.erase(gpu_name.find_last_not_of(" \n") + 1);
    }
    pclose(smi);
  }
  nlohmann::json results = {{"benchmark", "cuda_ops_bench"},
                            {"machine", bench::machine_info()},
                            {"gpu", gpu_name},
                            {"results", nlohmann::json::array()}};
  fmt::print("{:<8} {:>6} {:>4} {:>6} {:<7} {:>9} {:>9} {:>7} {:>9} {:>7}\n", "shape", "d", "E",
             "T", "routing", "meta us", "disp us", "disp %", "comb us", "comb %");
  for (const auto& s : shapes) {
    for (const std::string routing : {"uniform", "zipf", "single"}) {
      const auto probs = logits_for(routing, s.T, s.E).softmax(-1);
      const auto options = moeprune::functional::TopKRoutingOptions(s.k);
      const double t_meta = time_gpu([&] { moeprune::functional::top_k_route(probs, options); });
      const auto plan = moeprune::functional::top_k_route(probs, options);
      const int64_t R = plan.num_rows();
      const auto x = torch::randn({s.T, s.d}, torch::kCUDA).to(torch::kBFloat16);
      const auto y = torch::randn({R, s.d}, torch::kCUDA).to(torch::kBFloat16);
      const auto w = plan.combine_weight.to(torch::kBFloat16);
      const int64_t bytes = (s.T + R) * s.d * 2;  // METHODS.md section 2's minimum, both ops
      auto src = torch::empty({bytes / 2},
                              torch::TensorOptions().dtype(torch::kUInt8).device(torch::kCUDA));
      auto dst = torch::empty_like(src);
      const double t_copy = time_gpu([&] { dst.copy_(src); });  // reads and writes bytes / 2 each
      const double t_dispatch = time_gpu([&] { moeprune::ops::dispatch(x, plan); });
      const double t_combine = time_gpu([&] { moeprune::ops::combine(y, w, plan); });
      fmt::print("{:<8} {:>6} {:>4} {:>6} {:<7} {:>9.1f} {:>9.1f} {:>6.0f}% {:>9.1f} {:>6.0f}%\n",
                 s.name, s.d, s.E, s.T, routing, 1e6 * t_meta, 1e6 * t_dispatch,
                 100 * t_copy / t_dispatch, 1e6 * t_combine, 100 * t_copy / t_combine);
      results["results"].push_back({{"shape", s.name},
                                    {"d", s.d},
                                    {"experts", s.E},
                                    {"k", s.k},
                                    {"tokens", s.T},
                                    {"routing", routing},
                                    {"rows", R},
                                    {"dtype", "bfloat16"},
                                    {"routing_metadata_seconds", t_meta},
                                    {"dispatch_seconds", t_dispatch},
                                    {"combine_seconds", t_combine},
                                    {"device_copy_seconds", t_copy},
                                    {"dispatch_GBps", bytes / t_dispatch / 1e9},
                                    {"combine_GBps", bytes / t_combine / 1e9},
                                    {"device_copy_GBps", bytes / t_copy / 1e9}});
    }
  }
  const std::filesystem::path path(out.empty() ? "bench/results/cuda_ops.json" : out);
  if (path.has_parent_path()) {
    std::filesystem::create_directories(path.parent_path());
  }
  std::ofstream(path.string() + ".tmp") << results.dump(2) << "\n";
  std::filesystem::rename(path.string() + ".tmp", path);
  fmt::print("wrote {}\n", path.string());
  return 0;
}
