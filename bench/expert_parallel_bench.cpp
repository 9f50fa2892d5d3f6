// Expert parallelism on Gloo, one process per rank (run it under scripts/launch -n N): per layer
// call, the bytes each rank exchanges and the time of the exchange (the counts and the rows, out
// and back) beside the whole layer's forward + backward, and the time to gather the experts back
// (unshard_experts), at Mixtral-like and V-MoE-like shapes scaled to a CPU (fp32); then the small
// V-MoE's training throughput with data + expert parallelism. Rank 0 adds this world size's entry
// to bench/results/expert_parallel.json.
#include "machine_info.h"

#include <moeprune/distributed/expert_parallel.h>
#include <moeprune/distributed/process_group.h>
#include <moeprune/moeprune.h>

#include <fmt/format.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <thread>

namespace dist = moeprune::distributed;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Each rank's median over the repetitions; rank 0 reports the slowest rank's (a step waits for
// it).
double median(std::vector<double> t) {
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moeprune benchmark: expert parallelism over Gloo (run under scripts/launch)."};
  std::string out = "bench/results/expert_parallel.json";
  int reps = 5;
  app.add_option("--out", out, "JSON file (rank 0 adds this world size's entry)")
      ->capture_default_str();
  app.add_option("--reps", reps, "Timed repetitions (median)")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  const auto group = dist::ProcessGroup::from_env();
  const int64_t W = group.world_size(), rank = group.rank();
  const int threads =
      std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / static_cast<int>(W));
  torch::set_num_threads(threads);

  struct Shape {
    std::string name, preset;
    int64_t d, F, E, k, tokens;  // tokens per rank
  };
  // Mixtral-like: d 4096 -> 1024, F 14336 -> 3584 (same ratio), E 8, top-2, dropless.
  // V-MoE-like: V-MoE-B's d 768, F 3072, E 8, top-2, capacity 1.05, 8 images of 197 tokens.
  const std::vector<Shape> shapes = {{"mixtral_like", "top_k_gated", 1024, 3584, 8, 2, 512},
                                     {"vmoe_like", "vmoe", 768, 3072, 8, 2, 8 * 197}};
  nlohmann::json entry = {{"world_size", W},
                          {"threads_per_rank", threads},
                          {"backend", "gloo"},
                          {"dtype", "float32"},
                          {"shapes", nlohmann::json::array()}};
  for (const auto& s : shapes) {
    torch::manual_seed(0);
    moeprune::MoELayer layer(moeprune::MoELayerOptions::preset(s.preset, s.d, s.F, s.E));
    dist::shard_experts(layer, group);
    torch::manual_seed(1 + rank);
    const auto x = torch::randn({s.tokens, s.d});
    const auto g = torch::randn({s.tokens, s.d});
    std::vector<double> layer_t, exchange_t;
    int64_t bytes = 0;
    for (int i = 0; i <= reps; ++i) {
      group.barrier();
      const double start = now();
      const auto xi = x.clone().requires_grad_(true);
      const auto o = layer->forward(xi);
      o.output.backward(g);
      const double t = now() - start;
      bytes = dist::last_exchange_bytes(layer);
      // The exchange alone: the same rows out and back, twice (forward and backward).
      group.barrier();
      const double start_x = now();
      const auto& counts = o.plan.expert_counts;
      const auto per_rank = dist::ExpertPlacement::even(s.E, W);
      std::vector<int64_t> send(static_cast<size_t>(W), 0), held(static_cast<size_t>(W), 0);
      for (int64_t p = 0; p < s.E; ++p) {
        send[per_rank.rank_of[p]] += counts[p].item<int64_t>();
        held[per_rank.rank_of[p]] += 1;
      }
      const auto recv_counts = group.all_to_all(
          counts.contiguous(), held, std::vector<int64_t>(static_cast<size_t>(W), held[rank]));
      std::vector<int64_t> recv(static_cast<size_t>(W), 0);
      for (int64_t src = 0; src < W; ++src) {
        recv[src] = recv_counts.narrow(0, src * held[rank], held[rank]).sum().item<int64_t>();
      }
      const auto rows = torch::randn({o.plan.num_rows(), s.d});
      for (int pass = 0; pass < 2; ++pass) {
        const auto there = group.all_to_all(rows, send, recv);
        group.all_to_all(there, recv, send);
      }
      const double tx = now() - start_x;
      if (i > 0) {  // the first call warms up
        layer_t.push_back(t);
        exchange_t.push_back(tx);
      }
    }
    // Gathering the experts back to every process (unshard_experts: before pruning or export),
    // once: what each process receives is the other processes' experts.
    int64_t held_bytes = 0;
    for (const auto& p : layer->experts()->parameters()) {
      held_bytes += p.numel() * static_cast<int64_t>(p.element_size());
    }
    group.barrier();
    const double start_g = now();
    dist::unshard_experts(layer);
    const double gather_s = now() - start_g;
    int64_t whole_bytes = 0;
    for (const auto& p : layer->experts()->parameters()) {
      whole_bytes += p.numel() * static_cast<int64_t>(p.element_size());
    }
    const auto mine =
        torch::tensor({median(layer_t), median(exchange_t), static_cast<double>(bytes), gather_s,
                       static_cast<double>(whole_bytes - held_bytes)},
                      torch::kDouble);
    const auto all = group.all_gather(mine);  // [W, 5]
    const double layer_s = all.select(1, 0).max().item<double>();
    const double exchange_s = all.select(1, 1).max().item<double>();
    const double bytes_mean = all.select(1, 2).mean().item<double>();
    const double unshard_s = all.select(1, 3).max().item<double>();
    const double received_mean = all.select(1, 4).mean().item<double>();
    if (rank == 0) {
      fmt::print(
          "W={} {:<13} layer fwd+bwd {:8.2f} ms  exchange {:8.2f} ms ({:4.1f}%)  "
          "{:6.2f} MB/rank/call\n",
          W, s.name, 1e3 * layer_s, 1e3 * exchange_s, 100 * exchange_s / layer_s, bytes_mean / 1e6);
      fmt::print("W={} {:<13} unshard_experts {:8.2f} ms, {:7.2f} MB received per rank\n", W,
                 s.name, 1e3 * unshard_s, received_mean / 1e6);
      entry["shapes"].push_back({{"shape", s.name},
                                 {"preset", s.preset},
                                 {"d", s.d},
                                 {"hidden", s.F},
                                 {"experts", s.E},
                                 {"k", s.k},
                                 {"tokens_per_rank", s.tokens},
                                 {"layer_forward_backward_seconds", layer_s},
                                 {"exchange_seconds", exchange_s},
                                 {"forward_exchange_bytes_per_rank", bytes_mean},
                                 {"unshard_seconds", unshard_s},
                                 {"unshard_received_bytes_per_rank", received_mean},
                                 {"note",
                                  "seconds: the slowest rank's median; exchange: the counts and "
                                  "the rows out and back, forward and backward; unshard: one "
                                  "unshard_experts call, the slowest rank"}});
    }
  }
  {
    // The small V-MoE trained with data + expert parallelism: images per second over all
    // processes (synthetic 28x28 images; the same model and global batch on any W).
    const int64_t global_batch = 128, steps = 20;
    torch::manual_seed(3);
    moeprune::data::ImageDataset data;
    data.labels = torch::randint(0, 10, {global_batch * steps}, torch::kLong);
    data.images = (torch::rand({10, 1, 28, 28}).index_select(0, data.labels) * 200 +
                   torch::rand({data.labels.size(0), 1, 28, 28}) * 55)
                      .to(torch::kUInt8);
    data.num_classes = 10;
    torch::manual_seed(0);
    moeprune::VisionTransformer model(moeprune::VisionTransformerOptions::small_vmoe(10));
    for (auto& [block, layer] : model->moe_layers()) {
      dist::shard_experts(layer, group);
    }
    moeprune::Trainer trainer(model,
                              moeprune::TrainerOptions()
                                  .batch_size(global_batch / W)
                                  .epochs(1)
                                  .warmup_steps(2)
                                  .progress(false)
                                  .process_group(std::make_shared<dist::ProcessGroup>(group)));
    const auto logs = trainer.fit(data);
    if (rank == 0) {
      fmt::print(
          "W={} small_vmoe training: {:.0f} img/s (global batch {}, {} steps, loss {:.4f})\n", W,
          logs.back().images_per_second, global_batch, logs.back().steps, logs.back().train_loss);
      entry["small_vmoe_training"] = {{"images_per_second", logs.back().images_per_second},
                                      {"global_batch", global_batch},
                                      {"steps", logs.back().steps},
                                      {"train_loss", logs.back().train_loss}};
    }
  }
  if (rank == 0) {
    nlohmann::json results;
    if (std::ifstream in(out); in) {
      try {
        results = nlohmann::json::parse(in);
      } catch (const nlohmann::json::exception&) {
        results = nlohmann::json::object();
      }
    }
    results["benchmark"] = "expert_parallel_bench";
    results["machine"] = bench::machine_info();
    auto& runs = results["runs"];
    if (!runs.is_array()) {
      runs = nlohmann::json::array();
    }
    runs.erase(
        std::remove_if(runs.begin(), runs.end(),
                       [&](const nlohmann::json& r) { return r.value("world_size", 0) == W; }),
        runs.end());
    runs.push_back(entry);
    std::sort(runs.begin(), runs.end(), [](const nlohmann::json& a, const nlohmann::json& b) {
      return a.value("world_size", 0) < b.value("world_size", 0);
    });
    bench::write_results(out, results);
    fmt::print("wrote {}\n", out);
  }
  group.barrier();
  return 0;
}
