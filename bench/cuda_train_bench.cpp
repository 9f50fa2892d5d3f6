// The small V-MoE (VisionTransformerOptions::small_vmoe) trained on the GPU by the Trainer:
// images per second, and whether two runs from the same seeds give bitwise-equal losses and
// weights (torch's deterministic algorithms on; dispatch and combine are deterministic by
// construction). Synthetic 28x28 images (the GPU machine has no Fashion-MNIST package): each
// class a fixed random template plus noise, so the loss falls. Writes
// bench/results/cuda_train.json.
#include "gpu_timing.h"
#include "machine_info.h"

#include <moeprune/moeprune.h>

#include <fmt/format.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <string>
#include <vector>

namespace {

moeprune::data::ImageDataset synthetic(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  const auto templates = torch::rand({10, 1, 28, 28}) * 200.0;
  moeprune::data::ImageDataset d;
  d.labels = torch::randint(0, 10, {n}, torch::kLong);
  d.images = (templates.index_select(0, d.labels) + torch::randn({n, 1, 28, 28}) * 40.0)
                 .clamp(0, 255)
                 .to(torch::kUInt8);
  d.num_classes = 10;
  return d;
}

struct Run {
  std::vector<moeprune::EpochLog> logs;
  std::vector<torch::Tensor> weights;
};

Run train(const moeprune::data::ImageDataset& data, const torch::Device& device, int64_t epochs,
          int64_t batch) {
  torch::manual_seed(0);
  moeprune::VisionTransformer model(moeprune::VisionTransformerOptions::small_vmoe(10));
  model->to(device);
  moeprune::Trainer trainer(model, moeprune::TrainerOptions()
                                       .epochs(epochs)
                                       .batch_size(batch)
                                       .warmup_steps(20)
                                       .progress(false)
                                       .seed(1));
  Run run;
  run.logs = trainer.fit(data);
  for (const auto& p : model->parameters()) {
    run.weights.push_back(p.detach().cpu());
  }
  return run;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moeprune GPU benchmark: the small V-MoE's training on the GPU."};
  std::string out = "bench/results/cuda_train.json";
  int64_t images = 12800, epochs = 2, batch = 128;
  bool cpu = true;
  app.add_option("--out", out, "JSON file")->capture_default_str();
  app.add_option("--images", images, "Training images")->capture_default_str();
  app.add_option("--epochs", epochs, "Epochs per run")->capture_default_str();
  app.add_option("--batch", batch, "Batch size")->capture_default_str();
  app.add_flag("--cpu,!--no-cpu", cpu, "Also one epoch on the CPU, for the ratio");
  CLI11_PARSE(app, argc, argv);
  if (!torch::cuda::is_available()) {
    fmt::print("no CUDA device: nothing measured\n");
    return 0;
  }
  // cuBLAS repeats its results only with a fixed workspace (set before its first use).
  setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", 0);
  at::globalContext().setDeterministicAlgorithms(true, /*warn_only=*/true);
  const auto data = synthetic(images, 7);
  const auto first = train(data, torch::kCUDA, epochs, batch);
  const auto second = train(data, torch::kCUDA, epochs, batch);
  bool same_losses = first.logs.size() == second.logs.size();
  for (size_t i = 0; same_losses && i < first.logs.size(); ++i) {
    same_losses = first.logs[i].train_loss == second.logs[i].train_loss;
  }
  bool same_weights = first.weights.size() == second.weights.size();
  for (size_t i = 0; same_weights && i < first.weights.size(); ++i) {
    same_weights = torch::equal(first.weights[i], second.weights[i]);
  }
  nlohmann::json epochs_json = nlohmann::json::array();
  for (size_t i = 0; i < first.logs.size(); ++i) {
    epochs_json.push_back({{"epoch", i + 1},
                           {"train_loss", first.logs[i].train_loss},
                           {"train_loss_second_run", second.logs[i].train_loss},
                           {"images_per_second", first.logs[i].images_per_second},
                           {"images_per_second_second_run", second.logs[i].images_per_second}});
    fmt::print("epoch {}: loss {:.6f} / {:.6f}, {:.0f} / {:.0f} img/s\n", i + 1,
               first.logs[i].train_loss, second.logs[i].train_loss, first.logs[i].images_per_second,
               second.logs[i].images_per_second);
  }
  nlohmann::json results = {{"benchmark", "cuda_train_bench"},
                            {"machine", bench::machine_info()},
                            {"gpu", bench::gpu_name()},
                            {"model", "small_vmoe (fp32)"},
                            {"images", images},
                            {"batch_size", batch},
                            {"epochs", epochs_json},
                            {"bitwise_equal_losses", same_losses},
                            {"bitwise_equal_weights", same_weights}};
  fmt::print("two runs: losses {} , weights {}\n", same_losses ? "bitwise equal" : "DIFFER",
             same_weights ? "bitwise equal" : "DIFFER");
  if (cpu) {
    const auto on_cpu = train(data, torch::kCPU, 1, batch);
    const double ips = on_cpu.logs.front().images_per_second;
    results["cpu_images_per_second"] = ips;
    results["cpu_threads"] = torch::get_num_threads();
    results["gpu_over_cpu"] = first.logs.back().images_per_second / ips;
    fmt::print("CPU ({} threads): {:.0f} img/s; GPU / CPU {:.1f}x\n", torch::get_num_threads(), ips,
               first.logs.back().images_per_second / ips);
  }
  bench::write_results(out, results);
  fmt::print("wrote {}\n", out);
  return 0;
}
