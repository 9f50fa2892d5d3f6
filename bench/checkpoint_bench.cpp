// Streaming a checkpoint larger than memory through `moeprune prune`: peak RSS and MB/s of the
// pruning command against a plain `cp` of the same files.
//
// Makes a synthetic Mixtral-like checkpoint (Mixtral-8x7B's names and shapes in bf16, fewer layers
// to fit the disk; ~5 GB shards with model.safetensors.index.json), then runs, each as a child
// process measured with wait4():
//   cp -r SRC COPY                          (the copy speed the target compares with)
//   moeprune prune --criterion router_magnitude --experts-per-layer N --out OUT
// alternately, --repeat times (median reported). The page cache is dropped before each run when
// the process may (root); otherwise the JSON says it was not. Results:
// bench/results/checkpoint_stream.json.

#include "child_process.h"
#include "machine_info.h"

#include <moeprune/io/atomic_write.h>
#include <moeprune/io/safetensors.h>

#include <fmt/core.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

uint64_t folder_bytes(const std::string& dir) {
  uint64_t total = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.is_regular_file()) {
      total += e.file_size();
    }
  }
  return total;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Streams a synthetic Mixtral-like checkpoint through `moeprune prune`"};
  std::string work = "bench-checkpoint", cli = "build/tools/moeprune",
              json_out = "bench/results/checkpoint_stream.json";
  bool keep = false;
  int64_t layers = 9, experts = 8, pruned = 4, d = 4096, F = 14336, repeat = 3;
  app.add_option("--work", work, "Scratch folder (removed at the end)")->capture_default_str();
  app.add_option("--cli", cli, "The moeprune command line")->capture_default_str();
  app.add_option("--layers", layers, "Decoder layers")->capture_default_str();
  app.add_option("--experts", experts, "Experts per layer")->capture_default_str();
  app.add_option("--prune", pruned, "Experts pruned per layer")->capture_default_str();
  app.add_option("--d-model", d, "Hidden size")->capture_default_str();
  app.add_option("--ffn", F, "Expert hidden size")->capture_default_str();
  app.add_option("--json", json_out, "Result file")->capture_default_str();
  app.add_option("--repeat", repeat, "Alternating cp / prune pairs (the median is reported)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_flag("--keep", keep, "Keep the scratch folder (the synthetic and pruned checkpoints)");
  CLI11_PARSE(app, argc, argv);

  namespace fs = std::filesystem;
  const auto src = work + "/src", copy = work + "/copy", out = work + "/pruned";
  if (std::system(("rm -rf '" + work + "' && mkdir -p '" + src + "'").c_str()) != 0) {
    return 1;
  }
  // Shared slabs of random bf16 (writing them is what costs, not generating them).
  const auto opts = torch::TensorOptions().dtype(torch::kBFloat16);
  const auto up = torch::randn({F, d}, opts), down = torch::randn({d, F}, opts);
  const auto sq = torch::randn({d, d}, opts), kv = torch::randn({1024, d}, opts);
  const auto norm = torch::ones({d}, opts);
  const int64_t vocab = 32000;
  const auto embed = torch::randn({vocab, d}, opts);

  const uint64_t shard_limit = 5ULL << 30;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  tensors.emplace_back("model.embed_tokens.weight", embed);
  for (int64_t i = 0; i < layers; ++i) {
    const auto p = "model.layers." + std::to_string(i);
    tensors.emplace_back(p + ".input_layernorm.weight", norm);
    tensors.emplace_back(p + ".self_attn.q_proj.weight", sq);
    tensors.emplace_back(p + ".self_attn.k_proj.weight", kv);
    tensors.emplace_back(p + ".self_attn.v_proj.weight", kv);
    tensors.emplace_back(p + ".self_attn.o_proj.weight", sq);
    tensors.emplace_back(p + ".post_attention_layernorm.weight", norm);
    tensors.emplace_back(p + ".block_sparse_moe.gate.weight", torch::randn({experts, d}, opts));
    for (int64_t j = 0; j < experts; ++j) {
      const auto e = p + ".block_sparse_moe.experts." + std::to_string(j);
      tensors.emplace_back(e + ".w1.weight", up);
      tensors.emplace_back(e + ".w2.weight", down);
      tensors.emplace_back(e + ".w3.weight", up);
    }
  }
  tensors.emplace_back("model.norm.weight", norm);
  tensors.emplace_back("lm_head.weight", embed);
  // Shards of at most ~5 GB, as save_pretrained makes them.
  std::vector<std::vector<size_t>> shards(1);
  uint64_t in_shard = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t bytes = tensors[i].second.numel() * 2;
    if (in_shard + bytes > shard_limit && !shards.back().empty()) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(i);
    in_shard += bytes;
  }
  nlohmann::json weight_map = nlohmann::json::object();
  uint64_t total = 0;
  const auto make_start = std::chrono::steady_clock::now();
  for (size_t s = 0; s < shards.size(); ++s) {
    const auto name = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards.size());
    moeprune::safetensors::Writer w(src + "/" + name);
    for (auto i : shards[s]) {
      w.add(tensors[i].first, tensors[i].second);
      weight_map[tensors[i].first] = name;
    }
    w.set_metadata({{"format", "pt"}});
    total += w.data_bytes();
    w.finish();
    fmt::print("wrote {} ({}/{})\n", name, s + 1, shards.size());
    std::fflush(stdout);
  }
  const double make_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - make_start).count();
  std::ofstream(src + "/model.safetensors.index.json")
      << nlohmann::json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}.dump(2);
  std::ofstream(src + "/config.json") << nlohmann::json{
      {"model_type", "mixtral"},
      {"architectures", {"MixtralForCausalLM"}},
      {"hidden_size", d},
      {"intermediate_size", F},
      {"num_hidden_layers", layers},
      {"num_local_experts", experts},
      {"num_experts_per_tok", 2},
      {"num_attention_heads", 32},
      {"num_key_value_heads", 8},
      {"vocab_size", vocab},
      {"hidden_act", "silu"},
      {"torch_dtype", "bfloat16"}}.dump(2);
  const uint64_t src_bytes = folder_bytes(src);
  fmt::print("synthetic checkpoint: {:.2f} GB in {} shards ({:.1f} s)\n", src_bytes / 1e9,
             shards.size(), make_seconds);

  // Disk speed on a VM drifts between runs: cp and prune alternate `repeat` times and every
  // pair is reported; the summary is the median pair (by speed ratio).
  struct Pair {
    bench::RunResult cp, prune;
    double sync_seconds = 0, ratio = 0, ratio_no_sync = 0;
    uint64_t copy_bytes = 0, out_bytes = 0;
  };
  std::vector<Pair> pairs;
  bool dropped = true;
  for (int64_t rep = 0; rep < repeat; ++rep) {
    Pair p;
    // The previous pair's output goes first: the disk holds the source, a copy and one output.
    (void)std::system(("rm -rf '" + out + "' && sync").c_str());
    dropped = bench::drop_caches() && dropped;
    // cp leaves its data in the page cache; `moeprune prune` fsyncs every file before renaming
    // it (so a crash never leaves a renamed, empty shard). cp + sync is the like-for-like copy.
    p.cp = bench::run({"cp", "-r", src, copy});
    const auto sync_start = std::chrono::steady_clock::now();
    ::sync();
    p.sync_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - sync_start).count();
    p.copy_bytes = folder_bytes(copy);
    (void)std::system(("rm -rf '" + copy + "' && sync").c_str());
    const double cp_sync_seconds = p.cp.seconds + p.sync_seconds;
    fmt::print(
        "[{}/{}] cp: {:.1f} s ({:.0f} MB/s), + sync {:.1f} s ({:.0f} MB/s), peak RSS {:.0f} MB\n",
        rep + 1, repeat, p.cp.seconds, p.copy_bytes / 1e6 / p.cp.seconds, cp_sync_seconds,
        p.copy_bytes / 1e6 / cp_sync_seconds, p.cp.peak_rss_mb);

    dropped = bench::drop_caches() && dropped;
    p.prune = bench::run({cli, "prune", "--finetuned", src, "--criterion", "router_magnitude",
                          "--experts-per-layer", std::to_string(pruned), "--out", out});
    if (p.prune.status != 0) {
      fmt::print(stderr, "moeprune prune failed (status {})\n", p.prune.status);
      return 1;
    }
    p.out_bytes = folder_bytes(out);
    p.ratio = (p.out_bytes / p.prune.seconds) / (p.copy_bytes / cp_sync_seconds);
    p.ratio_no_sync = (p.out_bytes / p.prune.seconds) / (p.copy_bytes / p.cp.seconds);
    fmt::print(
        "[{}/{}] moeprune prune: {:.1f} s, {:.0f} MB/s written, peak RSS {:.0f} MB; speed vs cp + "
        "sync {:.2f}x, vs cp alone {:.2f}x\n",
        rep + 1, repeat, p.prune.seconds, p.out_bytes / 1e6 / p.prune.seconds, p.prune.peak_rss_mb,
        p.ratio, p.ratio_no_sync);
    pairs.push_back(p);
  }
  auto sorted = pairs;
  std::sort(sorted.begin(), sorted.end(),
            [](const Pair& a, const Pair& b) { return a.ratio < b.ratio; });
  const auto& median = sorted[sorted.size() / 2];
  const auto& cp = median.cp;
  const auto& prune = median.prune;
  const uint64_t copy_bytes = median.copy_bytes, out_bytes = median.out_bytes;
  const double ratio = median.ratio, ratio_no_sync = median.ratio_no_sync;
  double peak_rss = 0;
  for (const auto& p : pairs) {
    peak_rss = std::max(peak_rss, p.prune.peak_rss_mb);
  }
  fmt::print(
      "median of {}: speed vs cp + sync {:.2f}x, vs cp alone {:.2f}x (target >= 0.70); highest "
      "peak RSS {:.0f} MB (target < 2048 MB)\n",
      repeat, ratio, ratio_no_sync, peak_rss);
  nlohmann::json runs = nlohmann::json::array();
  for (const auto& p : pairs) {
    runs.push_back({{"cp_seconds", p.cp.seconds},
                    {"sync_seconds", p.sync_seconds},
                    {"prune_seconds", p.prune.seconds},
                    {"prune_peak_rss_mb", p.prune.peak_rss_mb},
                    {"speed_vs_copy_with_sync", p.ratio},
                    {"speed_vs_copy_without_sync", p.ratio_no_sync}});
  }

  nlohmann::json result = {
      {"benchmark", "checkpoint_stream"},
      {"machine", bench::machine_info()},
      {"checkpoint",
       {{"layers", layers},
        {"experts", experts},
        {"d_model", d},
        {"ffn", F},
        {"dtype", "bf16"},
        {"shards", shards.size()},
        {"bytes", src_bytes}}},
      {"page_cache_dropped", dropped},
      {"repeat", repeat},
      {"runs", runs},
      {"summary", "the median run (by speed_vs_copy_with_sync) of the alternating cp/prune pairs"},
      {"cp",
       {{"seconds", cp.seconds},
        {"bytes", copy_bytes},
        {"peak_rss_mb", cp.peak_rss_mb},
        {"mb_per_s", copy_bytes / 1e6 / cp.seconds}}},
      {"prune",
       {{"criterion", "router_magnitude"},
        {"experts_pruned_per_layer", pruned},
        {"seconds", prune.seconds},
        {"bytes_written", out_bytes},
        {"peak_rss_mb", peak_rss},
        {"mb_per_s", out_bytes / 1e6 / prune.seconds}}},
      {"speed_vs_copy_with_sync", ratio},
      {"speed_vs_copy_without_sync", ratio_no_sync},
      {"targets", {{"peak_rss_mb_below", 2048}, {"speed_vs_copy_at_least", 0.7}}}};
  fs::create_directories(fs::path(json_out).parent_path());
  moeprune::io::write_file_atomically(json_out, result.dump(2) + "\n");
  if (!keep) {
    (void)std::system(("rm -rf '" + work + "'").c_str());
  }
  fmt::print("results: {}\n", json_out);
  return 0;
}
