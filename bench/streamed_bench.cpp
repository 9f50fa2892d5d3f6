// Data-driven compression of a checkpoint larger than memory, layer-streamed, on a
// Qwen3-30B-A3B-shaped checkpoint, with the time per layer and peak resident memory:
// - REAP scoring on calibration tokens and the pruned write (`moeprune prune --calibration`);
//   results: bench/results/streamed_reap_qwen3_shape.json;
// - with --sparsify METHOD:PATTERN (e.g. sparsegpt:2:4 wanda:0.5), each a `moeprune sparsify` run
//   inside the experts instead; results: bench/results/streamed_sparsify_qwen3_shape.json;
// - with --quantize METHOD:BITS:GROUP[:FORMAT] (e.g. gptq:4:128:compressed-tensors), each a
//   `moeprune quantize` run of the experts; results:
//   bench/results/streamed_quantize_qwen3_shape.json.
//
// The checkpoint has Qwen3-30B-A3B's real widths (d 2048, 128 experts of 768, top-8, 32 query /
// 4 key-value heads of 128, vocabulary 151936) in bf16, with random weights (N(0, 1/fan-in);
// experts share a few random slabs, which costs the same compute and I/O as distinct ones) and as
// many decoder layers as the disk allows for it and its output (--layers to choose). It is
// written one shard per decoder layer, then the page cache is dropped (when allowed) before each
// command, which runs as a child process measured with bench::run; the extrapolation to the real
// 48 layers goes with each result.
#include "child_process.h"
#include "machine_info.h"

#include <moeprune/io/atomic_write.h>
#include <moeprune/io/safetensors.h>

#include <fmt/core.h>
#include <fmt/format.h>
#include <sys/statvfs.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

namespace {

constexpr int64_t kHidden = 2048, kExperts = 128, kExpertWidth = 768, kTopK = 8, kHeads = 32,
                  kKvHeads = 4, kHeadDim = 128, kVocab = 151936, kRealLayers = 48;

uint64_t free_bytes(const std::string& dir) {
  struct statvfs st {};
  if (::statvfs(dir.c_str(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

torch::Tensor random_weight(int64_t out, int64_t in) {
  return (torch::randn({out, in}) / std::sqrt(static_cast<double>(in))).to(torch::kBFloat16);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"REAP scoring + pruned write of a Qwen3-30B-A3B-shaped checkpoint, layer-streamed"};
  std::string work = "bench-streamed", cli = "build/tools/moeprune",
              json_out = "bench/results/streamed_reap_qwen3_shape.json";
  int64_t layers = 0, samples = 8, seq_len = 512, pruned = 64, slabs = 4;
  std::vector<std::string> sparsify, quantize;
  bool keep = false;
  app.add_option("--work", work, "Scratch folder (removed at the end)")->capture_default_str();
  app.add_option("--cli", cli, "The moeprune command line")->capture_default_str();
  app.add_option("--layers", layers, "Decoder layers (0: as many as the disk allows)");
  app.add_option("--samples", samples, "Calibration sequences")->capture_default_str();
  app.add_option("--seq-len", seq_len, "Tokens per sequence")->capture_default_str();
  app.add_option("--prune", pruned, "Experts pruned per layer (of 128)")->capture_default_str();
  app.add_option("--sparsify", sparsify,
                 "Instead of pruning: `moeprune sparsify` runs, each METHOD:PATTERN "
                 "(sparsegpt:0.5, wanda:2:4, ...)");
  app.add_option("--quantize", quantize,
                 "Instead of pruning: `moeprune quantize` runs, each METHOD:BITS:GROUP[:FORMAT] "
                 "(gptq:4:128:compressed-tensors, rtn:8:0, ...)");
  app.add_option("--json", json_out, "Result file")->capture_default_str();
  app.add_flag("--keep", keep, "Keep the scratch folder");
  CLI11_PARSE(app, argc, argv);
  if (!sparsify.empty() && !quantize.empty()) {
    fmt::print(stderr, "give --sparsify or --quantize, not both\n");
    return 2;
  }
  if (app.count("--json") == 0 && (!sparsify.empty() || !quantize.empty())) {
    json_out = sparsify.empty() ? "bench/results/streamed_quantize_qwen3_shape.json"
                                : "bench/results/streamed_sparsify_qwen3_shape.json";
  }
  const bool pruning = sparsify.empty() && quantize.empty();

  const auto src = work + "/src", out = work + "/pruned";
  if (std::system(("rm -rf '" + work + "' && mkdir -p '" + src + "'").c_str()) != 0) return 1;
  const uint64_t expert_bytes = 3ULL * kHidden * kExpertWidth * 2;
  const uint64_t attention_bytes =
      2ULL * (2ULL * kHeads * kHeadDim * kHidden + 2ULL * kKvHeads * kHeadDim * kHidden);
  const uint64_t layer_bytes = kExperts * expert_bytes + attention_bytes + kExperts * kHidden * 2;
  const uint64_t fixed_bytes = 2ULL * kVocab * kHidden * 2;  // embedding and LM head
  if (layers == 0) {
    // The source and its pruned copy (experts kept: 128 - prune) or its sparse copy (as large),
    // with 3 GB to spare.
    const double per_layer =
        layer_bytes * (1.0 + (pruning ? static_cast<double>(kExperts - pruned) / kExperts : 1.0));
    const double room = static_cast<double>(free_bytes(work)) - 2.0 * fixed_bytes - 3e9;
    layers = std::clamp<int64_t>(static_cast<int64_t>(room / per_layer), 1, kRealLayers);
  }
  fmt::print("{} layers of {:.2f} GB (+ {:.2f} GB embedding and head)\n", layers, layer_bytes / 1e9,
             fixed_bytes / 1e9);

  // The checkpoint: one shard per decoder layer plus one for the embedding, norm and head.
  torch::manual_seed(0);
  std::vector<torch::Tensor> gate_up, down;
  for (int64_t s = 0; s < slabs; ++s) {
    gate_up.push_back(random_weight(kExpertWidth, kHidden));
    down.push_back(random_weight(kHidden, kExpertWidth));
  }
  const auto ones = torch::ones({kHidden}, torch::kBFloat16);
  const auto head_ones = torch::ones({kHeadDim}, torch::kBFloat16);
  nlohmann::json weight_map = nlohmann::json::object();
  uint64_t total = 0;
  const auto make_start = std::chrono::steady_clock::now();
  const auto write_shard = [&](const std::string& name,
                               const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
    moeprune::safetensors::Writer w(src + "/" + name);
    for (const auto& [tensor_name, t] : tensors) {
      w.add(tensor_name, t);
      weight_map[tensor_name] = name;
    }
    w.set_metadata({{"format", "pt"}});
    total += w.data_bytes();
    w.finish();
  };
  write_shard("model-embed.safetensors",
              {{"model.embed_tokens.weight", random_weight(kVocab, kHidden)},
               {"model.norm.weight", ones},
               {"lm_head.weight", random_weight(kVocab, kHidden)}});
  for (int64_t i = 0; i < layers; ++i) {
    const auto p = "model.layers." + std::to_string(i);
    std::vector<std::pair<std::string, torch::Tensor>> t{
        {p + ".input_layernorm.weight", ones},
        {p + ".post_attention_layernorm.weight", ones},
        {p + ".self_attn.q_proj.weight", random_weight(kHeads * kHeadDim, kHidden)},
        {p + ".self_attn.k_proj.weight", random_weight(kKvHeads * kHeadDim, kHidden)},
        {p + ".self_attn.v_proj.weight", random_weight(kKvHeads * kHeadDim, kHidden)},
        {p + ".self_attn.o_proj.weight", random_weight(kHidden, kHeads * kHeadDim)},
        {p + ".self_attn.q_norm.weight", head_ones},
        {p + ".self_attn.k_norm.weight", head_ones},
        // Router rows N(0, 1): decisive routing, as a trained router's.
        {p + ".mlp.gate.weight", torch::randn({kExperts, kHidden}).to(torch::kBFloat16)}};
    for (int64_t j = 0; j < kExperts; ++j) {
      const auto e = p + ".mlp.experts." + std::to_string(j);
      t.emplace_back(e + ".gate_proj.weight", gate_up[(i + j) % slabs]);
      t.emplace_back(e + ".up_proj.weight", gate_up[(i + j + 1) % slabs]);
      t.emplace_back(e + ".down_proj.weight", down[(i + j) % slabs]);
    }
    write_shard(fmt::format("model-{:05d}.safetensors", i), t);
    fmt::print("wrote layer {}/{}\n", i + 1, layers);
    std::fflush(stdout);
  }
  const double make_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - make_start).count();
  std::ofstream(src + "/model.safetensors.index.json")
      << nlohmann::json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}.dump(2);
  std::ofstream(src + "/config.json") << nlohmann::json{
      {"architectures", {"Qwen3MoeForCausalLM"}},
      {"model_type", "qwen3_moe"},
      {"hidden_size", kHidden},
      {"intermediate_size", 6144},
      {"moe_intermediate_size", kExpertWidth},
      {"num_experts", kExperts},
      {"num_experts_per_tok", kTopK},
      {"norm_topk_prob", true},
      {"decoder_sparse_step", 1},
      {"mlp_only_layers", nlohmann::json::array()},
      {"num_hidden_layers", layers},
      {"num_attention_heads", kHeads},
      {"num_key_value_heads", kKvHeads},
      {"head_dim", kHeadDim},
      {"vocab_size", kVocab},
      {"max_position_embeddings", 40960},
      {"rms_norm_eps", 1e-6},
      {"rope_theta", 1000000.0},
      {"rope_scaling", nullptr},
      {"attention_bias", false},
      {"hidden_act", "silu"},
      {"router_aux_loss_coef", 0.001},
      {"sliding_window", nullptr},
      {"use_sliding_window", false},
      {"tie_word_embeddings", false},
      {"torch_dtype", "bfloat16"}}.dump(2);
  // Calibration: random token ids.
  const auto ids = torch::randint(kVocab, {samples * seq_len}, torch::kLong);
  {
    std::ofstream f(work + "/calibration.ids");
    for (int64_t i = 0; i < ids.size(0); ++i) f << ids[i].item<int64_t>() << '\n';
  }

  const double checkpoint_gb = (fixed_bytes + layers * layer_bytes) / 1e9;
  const double real_gb = (fixed_bytes + kRealLayers * layer_bytes) / 1e9;
  const nlohmann::json model{{"shape", "Qwen3-30B-A3B"},
                             {"d_model", kHidden},
                             {"experts", kExperts},
                             {"expert_width", kExpertWidth},
                             {"top_k", kTopK},
                             {"heads", kHeads},
                             {"kv_heads", kKvHeads},
                             {"vocab", kVocab},
                             {"dtype", "bf16"},
                             {"layers", layers},
                             {"checkpoint_gb", checkpoint_gb}};
  // Runs `moeprune ARGS... --out OUT` on the source with a cold page cache: its time, peak RSS
  // and the bytes it wrote (the output is removed afterwards).
  struct Measured {
    bench::RunResult run;
    bool dropped = false;
    uint64_t written = 0;
  };
  const auto measure = [&](std::vector<std::string> args) -> std::optional<Measured> {
    Measured m;
    std::system(("rm -rf '" + out + "'").c_str());
    m.dropped = bench::drop_caches();
    args.insert(args.begin(), cli);
    args.insert(args.end(), {"--calibration", work + "/calibration.ids", "--samples",
                             std::to_string(samples), "--seq-len", std::to_string(seq_len),
                             "--batch-size", "4", "--dtype", "bf16", "--out", out});
    m.run = bench::run(args);
    if (m.run.status != 0) {
      fmt::print(stderr, "{} failed (status {})\n", fmt::join(args, " "), m.run.status);
      return std::nullopt;
    }
    moeprune::safetensors::Checkpoint written(out);
    for (const auto& shard : written.shard_files()) m.written += written.file(shard).file_size();
    std::system(("rm -rf '" + out + "'").c_str());
    return m;
  };

  nlohmann::json j;
  if (pruning) {
    const auto m = measure({"prune", "--finetuned", src, "--criterion", "reap",
                            "--experts-per-layer", std::to_string(pruned), "--router", "cut"});
    if (!m) return 1;
    const double per_layer = m->run.seconds / static_cast<double>(layers);
    j = {
        {"benchmark", "moeprune prune --criterion reap --calibration (layer-streamed)"},
        {"machine", bench::machine_info()},
        {"model", model},
        {"calibration_tokens", samples * seq_len},
        {"samples", samples},
        {"seq_len", seq_len},
        {"experts_pruned_per_layer", pruned},
        {"page_cache_dropped", m->dropped},
        {"write_source_seconds", make_seconds},
        {"prune_seconds", m->run.seconds},
        {"seconds_per_layer", per_layer},
        {"peak_rss_mb", m->run.peak_rss_mb},
        {"pruned_gb_written", m->written / 1e9},
        {"extrapolated_48_layers",
         {{"checkpoint_gb", real_gb},
          {"prune_minutes", per_layer * kRealLayers / 60.0},
          {"note",
           "time grows with the layers; peak memory is one layer plus the activations, "
           "so it does not"}}},
        {"peer",
         {{"what", "loading the model whole, as REAP's observer and llm-compressor do"},
          {"weights_gb_bf16", real_gb},
          {"note", "the bf16 weights alone, before activations; REAP runs on GPUs holding them"}}}};
    fmt::print(
        "{} layers ({:.1f} GB): prune {:.1f} s ({:.1f} s/layer), peak RSS {:.0f} MB, wrote "
        "{:.1f} GB; 48 layers: ~{:.0f} min at the same peak\n",
        layers, checkpoint_gb, m->run.seconds, per_layer, m->run.peak_rss_mb, m->written / 1e9,
        per_layer * kRealLayers / 60.0);
  } else {
    nlohmann::json runs = nlohmann::json::array();
    // Each spec as the command's arguments and the fields its result row gets.
    std::vector<std::pair<std::vector<std::string>, nlohmann::json>> specs;
    for (const auto& spec : sparsify) {
      const auto colon = spec.find(':');
      if (colon == std::string::npos) {
        fmt::print(stderr, "--sparsify {}: give METHOD:PATTERN, e.g. sparsegpt:2:4\n", spec);
        return 2;
      }
      const auto method = spec.substr(0, colon), pattern = spec.substr(colon + 1);
      const bool nm = pattern.find(':') != std::string::npos;
      specs.push_back({{"sparsify", src, "--method", method, nm ? "--nm" : "--sparsity", pattern},
                       {{"method", method}, {"pattern", pattern}}});
    }
    for (const auto& spec : quantize) {
      std::vector<std::string> parts;
      for (size_t at = 0;;) {
        const auto colon = spec.find(':', at);
        parts.push_back(spec.substr(at, colon - at));
        if (colon == std::string::npos) break;
        at = colon + 1;
      }
      if (parts.size() < 3 || parts.size() > 4) {
        fmt::print(stderr, "--quantize {}: give METHOD:BITS:GROUP[:FORMAT], e.g. gptq:4:128\n",
                   spec);
        return 2;
      }
      const auto format = parts.size() == 4 ? parts[3] : std::string("dense");
      specs.push_back({{"quantize", src, "--method", parts[0], "--bits", parts[1], "--group-size",
                        parts[2], "--format", format},
                       {{"method", parts[0]},
                        {"bits", std::stoi(parts[1])},
                        {"group_size", std::stoi(parts[2])},
                        {"format", format}}});
    }
    for (const auto& [args, fields] : specs) {
      const auto m = measure(args);
      if (!m) return 1;
      const double per_layer = m->run.seconds / static_cast<double>(layers);
      auto row = fields;
      row.update({{"page_cache_dropped", m->dropped},
                  {"seconds", m->run.seconds},
                  {"seconds_per_layer", per_layer},
                  {"peak_rss_mb", m->run.peak_rss_mb},
                  {"gb_written", m->written / 1e9},
                  {"extrapolated_48_layers_minutes", per_layer * kRealLayers / 60.0}});
      runs.push_back(row);
      fmt::print(
          "{} on {} layers ({:.1f} GB): {:.1f} s ({:.1f} s/layer), peak RSS {:.0f} MB, wrote "
          "{:.2f} GB; 48 layers: ~{:.0f} min at the same peak\n",
          fmt::join(args.begin() + 2, args.end(), " "), layers, checkpoint_gb, m->run.seconds,
          per_layer, m->run.peak_rss_mb, m->written / 1e9, per_layer * kRealLayers / 60.0);
      std::fflush(stdout);
    }
    j = {{"benchmark", std::string(sparsify.empty() ? "moeprune quantize" : "moeprune sparsify") +
                           " inside the experts, each expert calibrated on its routed tokens "
                           "(layer-streamed, sequential)"},
         {"machine", bench::machine_info()},
         {"model", model},
         {"calibration_tokens", samples * seq_len},
         {"samples", samples},
         {"seq_len", seq_len},
         {"write_source_seconds", make_seconds},
         {"runs", runs},
         {"note",
          "time grows with the layers; peak memory is one decoder layer, its captured inputs, "
          "one expert's Gram matrices and the activations, so it does not"},
         {"peer",
          {{"what", sparsify.empty()
                        ? "llm-compressor and GPTQModel/AutoAWQ load the model whole"
                        : "llm-compressor and the Wanda/SparseGPT references load the model whole"},
           {"weights_gb_bf16", real_gb}}}};
  }
  moeprune::io::write_file_atomically(json_out, j.dump(2) + "\n");
  if (!keep && std::system(("rm -rf '" + work + "'").c_str()) != 0) return 1;
  return 0;
}
