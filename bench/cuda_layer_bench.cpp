// GPU benchmark of a whole MoE layer, forward + backward in bf16: the sync-free layer against
// the Hugging Face 4.x expert loop (per expert: find its tokens, index_select, the expert MLP,
// index_add_ of the weighted output; written here with the layer's own weights and routing) and
// against its own grouped-GEMM time (the expert bank on the dispatched buffer alone). Shapes:
// V-MoE-B, Switch-base, Mixtral and decoding (T <= 256). Writes bench/results/cuda_layer.json.
#include "gpu_timing.h"
#include "machine_info.h"

#include <moeprune/moeprune.h>

#include <fmt/format.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace {

using moeprune::ExpertKind;

// The transformers 4.x loop (modeling_mixtral.py MixtralSparseMoeBlock, SwitchTransformers'
// SparseMLP): for each expert, the (token, slot) pairs routed to it, gathered, run, weighted and
// added back. The routing (slots kept after capacity) is the layer's plan.
torch::Tensor hf_loop(const torch::Tensor& x, const moeprune::RoutingPlan& plan,
                      moeprune::ExpertBankImpl& bank) {
  auto out = torch::zeros_like(x);
  const auto kept = plan.slot_row.ge(0);
  const auto weight = plan.combine_weight.to(x.scalar_type());
  const bool gated = bank.options.kind() == ExpertKind::kGated;
  for (int64_t e = 0; e < bank.num_held(); ++e) {
    const auto hit = plan.expert_index.eq(e).logical_and(kept).nonzero();  // [n, 2]: token, slot
    if (hit.size(0) == 0) {
      continue;
    }
    const auto token = hit.select(1, 0), slot = hit.select(1, 1);
    const auto xe = x.index_select(0, token);
    torch::Tensor h;
    if (gated) {
      h = torch::silu(xe.mm(bank.w1[e])) * xe.mm(bank.w3[e]);
    } else {
      h = xe.mm(bank.w1[e]);
      if (bank.b1.defined()) {
        h = h + bank.b1[e];
      }
      h = bank.options.activation() == moeprune::ExpertActivation::kRelu ? torch::relu(h)
                                                                         : torch::gelu(h, "tanh");
    }
    auto y = h.mm(bank.w2[e]);
    if (bank.b2.defined()) {
      y = y + bank.b2[e];
    }
    const auto w = weight.index({token, slot}).unsqueeze(1);
    out = out.index_add(0, token, y * w);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moeprune GPU benchmark: the MoE layer vs the transformers expert loop."};
  std::string out = "bench/results/cuda_layer.json";
  int reps = 10;
  bool quick = false;
  app.add_option("--out", out, "JSON file")->capture_default_str();
  app.add_option("--reps", reps, "Timed repetitions (median)")->check(CLI::PositiveNumber);
  app.add_flag("--quick", quick, "Fewer decode sizes");
  CLI11_PARSE(app, argc, argv);
  if (!torch::cuda::is_available()) {
    fmt::print("no CUDA device: nothing measured\n");
    return 0;
  }
  struct Shape {
    std::string name, preset;
    int64_t d, F, E, k, batch, seq;
  };
  // V-MoE-B/16 at 224 px: 196 + 1 tokens, batch 64 (E 8, top-2); Switch-base: 128 experts,
  // top-1, 64 per sequence of 512; Mixtral 8x7B: d 4096, F 14336, top-2.
  std::vector<Shape> shapes = {{"vmoe_b", "vmoe", 768, 3072, 8, 2, 64, 197},
                               {"switch_base", "switch", 768, 3072, 128, 1, 32, 512},
                               {"mixtral", "top_k_gated", 4096, 14336, 8, 2, 1, 16384}};
  for (const int64_t t :
       quick ? std::vector<int64_t>{1, 256} : std::vector<int64_t>{1, 16, 64, 256}) {
    shapes.push_back({"decode", "top_k_gated", 4096, 14336, 8, 2, t, 1});
  }
  nlohmann::json results = {{"benchmark", "cuda_layer_bench"},
                            {"machine", bench::machine_info()},
                            {"gpu", bench::gpu_name()},
                            {"dtype", "bfloat16"},
                            {"measure", "forward + backward, median seconds"},
                            {"results", nlohmann::json::array()}};
  fmt::print("{:<12} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}\n", "shape", "tokens",
             "layer ms", "exact ms", "loop ms", "gemm ms", "loop/lay", "lay/gemm");
  const auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  for (const auto& s : shapes) {
    torch::manual_seed(0);
    auto options = moeprune::MoELayerOptions::preset(s.preset, s.d, s.F, s.E).check_finite(false);
    options.routing().k(s.k);
    moeprune::MoELayer exact(options);
    moeprune::MoELayer layer(moeprune::MoELayerOptions(options).sync_free(true));
    for (auto* l : {&exact, &layer}) {
      (*l)->to(torch::kCUDA, torch::kBFloat16);
      (*l)->train();
    }
    const auto input = torch::randn({s.batch, s.seq, s.d}, bf16);
    const auto grad = torch::randn({s.batch, s.seq, s.d}, bf16);
    const int64_t T = s.batch * s.seq;
    auto run_layer = [&](moeprune::MoELayer& l) {
      const auto x = input.detach().requires_grad_(true);
      const auto o = l->forward(x);
      torch::autograd::backward({o.output, o.aux_loss}, {grad, torch::ones_like(o.aux_loss)});
    };
    const double t_layer = bench::time_gpu([&] { run_layer(layer); }, reps);
    const double t_exact = bench::time_gpu([&] { run_layer(exact); }, reps);
    // The same routing for the loop and the GEMM-only measure.
    moeprune::RoutingPlan plan;
    torch::Tensor rows;
    {
      torch::NoGradGuard no_grad;
      plan = layer->forward(input).plan;
      rows = moeprune::ops::dispatch(input.reshape({T, s.d}), plan);
    }
    const auto x2 = input.reshape({T, s.d});
    const auto g2 = grad.reshape({T, s.d});
    const double t_loop = bench::time_gpu(
        [&] {
          const auto x = x2.detach().requires_grad_(true);
          hf_loop(x, plan, *layer->experts()).backward(g2);
        },
        reps);
    const auto grad_rows = torch::randn_like(rows);
    const double t_gemm = bench::time_gpu(
        [&] {
          const auto r = rows.detach().requires_grad_(true);
          layer->experts()->forward_offsets(r, plan.expert_offsets).backward(grad_rows);
        },
        reps);
    const bool grouped = layer->experts()->grouped_gemm_supported(rows);
    fmt::print("{:<12} {:>6} {:>10.3f} {:>10.3f} {:>10.3f} {:>10.3f} {:>7.2f}x {:>7.2f}x\n", s.name,
               T, 1e3 * t_layer, 1e3 * t_exact, 1e3 * t_loop, 1e3 * t_gemm, t_loop / t_layer,
               t_layer / t_gemm);
    results["results"].push_back({{"shape", s.name},
                                  {"preset", s.preset},
                                  {"d", s.d},
                                  {"hidden", s.F},
                                  {"experts", s.E},
                                  {"k", s.k},
                                  {"tokens", T},
                                  {"rows", plan.num_rows()},
                                  {"kept_rows", plan.num_kept_rows()},
                                  {"grouped_gemm", grouped},
                                  {"layer_sync_free_seconds", t_layer},
                                  {"layer_exact_layout_seconds", t_exact},
                                  {"hf_loop_seconds", t_loop},
                                  {"expert_gemm_seconds", t_gemm},
                                  {"loop_over_layer", t_loop / t_layer},
                                  {"layer_over_gemm", t_layer / t_gemm}});
  }
  bench::write_results(out, results);
  fmt::print("wrote {}\n", out);
  return 0;
}
