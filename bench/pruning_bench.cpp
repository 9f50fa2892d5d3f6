// Forward latency, throughput and parameter memory of pruned small vision MoEs against the
// unpruned model, at 25/50/75% of experts pruned per MoE layer, for token choice (router columns
// kept, the paper's semantics) and expert choice (router columns dropped).
#include "machine_info.h"

#include <moeprune/io/atomic_write.h>
#include <moeprune/moeprune.h>

#include <fmt/format.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>

namespace {

double median_seconds(const std::function<void()>& body, int reps) {
  body();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    body();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CPU benchmark of pruned vision MoEs: latency, throughput, parameter memory."};
  std::string out = "bench/results/pruning_cpu.json";
  int reps = 5;
  int64_t batch = 256;
  app.add_option("--out", out, "JSON file to write");
  app.add_option("--reps", reps, "Timed repetitions (median)")->check(CLI::PositiveNumber);
  app.add_option("--batch", batch, "Images per forward pass")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  nlohmann::json results = {{"benchmark", "pruning_bench"},
                            {"machine", bench::machine_info()},
                            {"batch", batch},
                            {"reps", reps},
                            {"results", nlohmann::json::array()}};
  torch::NoGradGuard no_grad;
  const auto images = torch::randn({batch, 1, 28, 28});
  fmt::print("{:<22} {:>7} {:>12} {:>12} {:>14}\n", "model", "pruned", "latency ms", "images/s",
             "param MB");
  for (const std::string preset : {"small_vmoe", "small_expert_choice"}) {
    for (const double fraction : {0.0, 0.25, 0.5, 0.75}) {
      torch::manual_seed(0);
      moeprune::VisionTransformer model(moeprune::VisionTransformerOptions::small(preset, 10));
      model->eval();
      const int64_t E = model->options.num_experts();
      const auto n = static_cast<int64_t>(fraction * static_cast<double>(E));
      if (n > 0) {
        const auto view = moeprune::moe_view(model);
        const auto scores =
            moeprune::pruning::score_experts(moeprune::pruning::RandomCriterion(), *view);
        moeprune::pruning::apply_plan(*view,
                                      moeprune::pruning::PruningPlan::same_count(scores, *view, n));
      }
      int64_t bytes = 0;
      for (const auto& p : model->parameters()) {
        bytes += static_cast<int64_t>(p.nbytes());
      }
      const double t = median_seconds([&] { model(images); }, reps);
      fmt::print("{:<22} {:>6.0f}% {:>12.2f} {:>12.0f} {:>14.3f}\n", preset, 100 * fraction,
                 1e3 * t, static_cast<double>(batch) / t, static_cast<double>(bytes) / 1e6);
      results["results"].push_back({{"model", preset},
                                    {"experts_pruned_per_layer", n},
                                    {"fraction_pruned", fraction},
                                    {"forward_seconds", t},
                                    {"images_per_second", static_cast<double>(batch) / t},
                                    {"parameter_bytes", bytes}});
    }
  }
  moeprune::io::write_file_atomically(out, results.dump(2) + "\n");
  fmt::print("wrote {}\n", out);
  return 0;
}
