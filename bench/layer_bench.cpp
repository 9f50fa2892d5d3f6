// CPU benchmark of routing, dispatch, combine and the full MoE layer (forward + backward)
// against the straightforward LibTorch loop over experts (index_select / index_add_, as HF
// transformers 4.x does) and against memcpy of the same bytes, all measured in one run.
// Writes bench/results/<name>.json with the machine's description.
#include "machine_info.h"

#include <moeprune/io/atomic_write.h>
#include <moeprune/moeprune.h>

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
namespace fn = moeprune::functional;

int reps = 5;

// Median wall time of `reps` runs after one warm-up, in seconds.
double time_it(const std::function<void()>& body) {
  body();
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    const auto start = Clock::now();
    body();
    times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// memcpy of `bytes`, split over the same threads the kernels use.
double time_memcpy(int64_t bytes) {
  std::vector<char> src(static_cast<size_t>(bytes), 1), dst(static_cast<size_t>(bytes));
  return time_it([&] {
    at::parallel_for(0, bytes, 1 << 20, [&](int64_t b, int64_t e) {
      std::memcpy(dst.data() + b, src.data() + b, static_cast<size_t>(e - b));
    });
  });
}

struct Shape {
  std::string name;
  int64_t d, hidden, experts, k, tokens;
  bool gated;
};

// HF transformers 4.x MixtralSparseMoeBlock / SwitchTransformersSparseMLP style: a loop over
// experts with index_select and index_add_, using the bank's parameters (the same GEMMs).
torch::Tensor loop_layer(moeprune::MoELayer& layer, const torch::Tensor& x, const Shape& s) {
  auto& bank = layer->experts();
  const auto probs = x.matmul(layer->router().router_weight().t()).softmax(-1);
  auto [top_p, top_e] = probs.topk(s.k, -1);
  if (s.gated) {
    top_p = top_p / top_p.sum(-1, true);
  }
  auto out = torch::zeros_like(x);
  const auto mask = torch::one_hot(top_e, s.experts).permute({2, 1, 0});  // [E, k, T]
  for (int64_t e = 0; e < s.experts; ++e) {
    const auto where = torch::where(mask[e]);
    const auto& slot = where[0];
    const auto& token = where[1];
    if (token.numel() == 0) {
      continue;
    }
    const auto cur = x.index_select(0, token);
    torch::Tensor y;
    if (s.gated) {
      y = (torch::silu(cur.mm(bank->w1[e])) * cur.mm(bank->w3[e])).mm(bank->w2[e]);
    } else {
      y = torch::addmm(bank->b2[e],
                       torch::gelu(torch::addmm(bank->b1[e], cur, bank->w1[e]), "tanh"),
                       bank->w2[e]);
    }
    out.index_add_(0, token, y * top_p.index({token, slot}).unsqueeze(-1));
  }
  return out;
}

nlohmann::json run_shape(const Shape& s) {
  fmt::print("\n== {}: d {}, hidden {}, E {}, k {}, T {} ({}), fp32, {} threads\n", s.name, s.d,
             s.hidden, s.experts, s.k, s.tokens, s.gated ? "SwiGLU" : "GELU MLP",
             at::get_num_threads());
  torch::manual_seed(0);
  // Dropless top-k routing, so both implementations run exactly the same GEMMs.
  auto options =
      moeprune::MoELayerOptions(s.d, s.hidden, s.experts)
          .router(moeprune::TopKRouterConfig().routing(
              fn::TopKRoutingOptions(s.k).renormalize(s.gated)))
          .expert_kind(s.gated ? moeprune::ExpertKind::kGated : moeprune::ExpertKind::kMlp)
          .activation(s.gated ? moeprune::ExpertActivation::kSilu
                              : moeprune::ExpertActivation::kGeluTanh)
          .expert_bias(!s.gated);
  moeprune::MoELayer layer(options);
  layer->eval();  // no noise: identical routing in every run
  const auto x = torch::randn({s.tokens, s.d});
  const auto grad_out = torch::randn({s.tokens, s.d});
  const auto plan = layer->router().route(x, {}, -1, 0).plan;
  const int64_t R = plan.num_rows();
  const auto counts = plan.counts();
  const auto weight = plan.combine_weight.detach();
  const int64_t es = 4;

  nlohmann::json r = {{"shape", s.name},
                      {"d", s.d},
                      {"hidden", s.hidden},
                      {"experts", s.experts},
                      {"k", s.k},
                      {"tokens", s.tokens},
                      {"rows", R},
                      {"dtype", "float32"},
                      {"expert", s.gated ? "swiglu" : "gelu_mlp"}};

  // Routing metadata alone: logits, softmax, top-k, slot positions, row layout.
  const double t_route = time_it([&] { layer->router().route(x, {}, -1, 0); });

  // Data movement against memcpy of the same bytes (METHODS.md section 2's minimum traffic).
  const auto rows = moeprune::ops::dispatch(x, plan);
  const auto y = torch::randn({R, s.d});
  const int64_t dispatch_bytes = (s.tokens * s.d + R * s.d) * es;
  const int64_t combine_bytes = (R * s.d + s.tokens * s.d) * es;
  const double t_dispatch = time_it([&] { moeprune::ops::dispatch(x, plan); });
  const double t_combine = time_it([&] { moeprune::ops::combine(y, weight, plan); });
  // A memcpy of N bytes reads N and writes N: copy half the op's traffic.
  const double t_copy_dispatch = time_memcpy(dispatch_bytes / 2);
  const double t_copy_combine = time_memcpy(combine_bytes / 2);

  // The expert GEMMs alone, forward + backward, on already-dispatched rows: the floor.
  const double t_gemm = time_it([&] {
    layer->zero_grad();
    auto in = rows.detach().requires_grad_(true);
    auto out = layer->experts()->forward(in, counts);
    out.backward(y);
  });
  // Full layer forward + backward: ours, and the loop.
  auto xg = x.clone().requires_grad_(true);
  const double t_layer = time_it([&] {
    layer->zero_grad();
    xg.mutable_grad() = torch::Tensor();
    layer(xg).output.backward(grad_out);
  });
  const double t_loop = time_it([&] {
    layer->zero_grad();
    xg.mutable_grad() = torch::Tensor();
    loop_layer(layer, xg, s).backward(grad_out);
  });
  // Same answer from both (a sanity check that the comparison is fair).
  torch::Tensor ours, theirs;
  {
    torch::NoGradGuard ng;
    ours = layer(x).output;
    theirs = loop_layer(layer, x, s);
  }
  const double max_diff = (ours - theirs).abs().max().item<double>();

  const auto gbs = [](int64_t bytes, double t) { return static_cast<double>(bytes) / t / 1e9; };
  r["seconds"] = {{"routing", t_route},
                  {"dispatch", t_dispatch},
                  {"combine", t_combine},
                  {"memcpy_dispatch_bytes", t_copy_dispatch},
                  {"memcpy_combine_bytes", t_copy_combine},
                  {"expert_gemms_fwd_bwd", t_gemm},
                  {"layer_fwd_bwd", t_layer},
                  {"loop_layer_fwd_bwd", t_loop}};
  r["dispatch_GBps"] = gbs(dispatch_bytes, t_dispatch);
  r["combine_GBps"] = gbs(combine_bytes, t_combine);
  r["memcpy_GBps"] = gbs(dispatch_bytes, t_copy_dispatch);
  r["dispatch_vs_memcpy"] = t_copy_dispatch / t_dispatch;
  r["combine_vs_memcpy"] = t_copy_combine / t_combine;
  r["layer_overhead_over_gemms"] = (t_layer - t_gemm) / t_gemm;
  r["speedup_vs_loop"] = t_loop / t_layer;
  r["max_abs_diff_vs_loop"] = max_diff;

  fmt::print("  routing metadata       {:9.2f} ms\n", 1e3 * t_route);
  fmt::print("  dispatch               {:9.2f} ms  {:6.2f} GB/s  ({:.0f}% of memcpy {:.2f} GB/s)\n",
             1e3 * t_dispatch, gbs(dispatch_bytes, t_dispatch), 100 * t_copy_dispatch / t_dispatch,
             gbs(dispatch_bytes, t_copy_dispatch));
  fmt::print("  combine                {:9.2f} ms  {:6.2f} GB/s  ({:.0f}% of memcpy {:.2f} GB/s)\n",
             1e3 * t_combine, gbs(combine_bytes, t_combine), 100 * t_copy_combine / t_combine,
             gbs(combine_bytes, t_copy_combine));
  fmt::print("  expert GEMMs fwd+bwd   {:9.1f} ms\n", 1e3 * t_gemm);
  fmt::print("  layer fwd+bwd          {:9.1f} ms  (+{:.1f}% over the GEMMs)\n", 1e3 * t_layer,
             100 * (t_layer - t_gemm) / t_gemm);
  fmt::print("  loop (HF 4.x) fwd+bwd  {:9.1f} ms  (ours is {:.2f}x faster; max |diff| {:.2e})\n",
             1e3 * t_loop, t_loop / t_layer, max_diff);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moeprune CPU benchmark: routing, dispatch, combine and the MoE layer."};
  std::string out = "bench/results/cpu_layer.json";
  int64_t tokens = 4096;
  app.add_option("--out", out, "JSON file to write");
  app.add_option("--reps", reps, "Timed repetitions per measurement (median)")
      ->check(CLI::PositiveNumber);
  app.add_option("--tokens", tokens, "Tokens per batch")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  const std::vector<Shape> shapes = {
      {"vmoe_like", 768, 3072, 8, 2, tokens, false},
      {"mixtral_like", 1024, 3584, 8, 2, tokens, true},
  };
  nlohmann::json results = {{"benchmark", "layer_bench"},
                            {"machine", bench::machine_info()},
                            {"reps", reps},
                            {"results", nlohmann::json::array()}};
  for (const auto& s : shapes) {
    results["results"].push_back(run_shape(s));
  }
  moeprune::io::write_file_atomically(out, results.dump(2) + "\n");
  fmt::print("\nwrote {}\n", out);
  return 0;
}
