// GPU benchmark of routing metadata (exact and fixed-size layouts), dispatch and combine forward
// and backward, each against a device-to-device copy moving the same bytes in the same run, at
// Mixtral, V-MoE-B and decoding-size shapes, with uniform, Zipf and single-expert routing (bf16).
// Writes bench/results/cuda_ops.json with the GPU's name. Exits with a message (and writes
// nothing) when no GPU is present.
#include "gpu_timing.h"
#include "machine_info.h"

#include <moeprune/moeprune.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <fmt/format.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <string>
#include <tuple>
#include <vector>

namespace {

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

// The backward ops, called directly so their time is theirs alone.
torch::Tensor dispatch_backward(const torch::Tensor& grad_rows, const moeprune::RoutingPlan& p) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("moeprune::_dispatch_backward", "")
          .typed<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&)>();
  return op.call(grad_rows, p.slot_row, p.row_slot);
}

std::tuple<torch::Tensor, torch::Tensor> combine_backward(const torch::Tensor& grad,
                                                          const torch::Tensor& rows,
                                                          const torch::Tensor& weight,
                                                          const moeprune::RoutingPlan& p) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("moeprune::_combine_backward", "")
                             .typed<std::tuple<torch::Tensor, torch::Tensor>(
                                 const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                 const torch::Tensor&, const torch::Tensor&)>();
  return op.call(grad, rows, weight, p.slot_row, p.row_slot);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moeprune GPU benchmark: routing metadata, dispatch, combine vs device copy."};
  std::string out = "bench/results/cuda_ops.json";
  int reps = 20;
  bool quick = false;
  app.add_option("--out", out, "JSON file")->capture_default_str();
  app.add_option("--reps", reps, "Timed repetitions (median)")->check(CLI::PositiveNumber);
  app.add_flag("--quick", quick, "Only the shapes the targets name (Mixtral 16k/64k, V-MoE-B 16k)");
  CLI11_PARSE(app, argc, argv);
  if (!torch::cuda::is_available()) {
    fmt::print("no CUDA device: nothing measured\n");
    return 0;
  }
  struct Shape {
    std::string name;
    int64_t d, E, k, T;
  };
  std::vector<Shape> shapes = {
      {"mixtral", 4096, 8, 2, 16384}, {"mixtral", 4096, 8, 2, 65536}, {"vmoe_b", 768, 8, 2, 16384}};
  if (!quick) {
    shapes.insert(shapes.begin(), {"mixtral", 4096, 8, 2, 4096});
    shapes.push_back({"vmoe_b", 768, 32, 2, 16384});
    for (const int64_t t : {1, 4, 16, 64, 256}) {
      shapes.push_back({"decode", 4096, 8, 2, t});
    }
  }
  nlohmann::json results = {
      {"benchmark", "cuda_ops_bench"},
      {"machine", bench::machine_info()},
      {"gpu", bench::gpu_name()},
      {"dtype", "bfloat16"},
      {"note",
       "bytes: the minimum each op moves (rows read + rows written); the copy "
       "moves the same bytes (half read, half written); pct = copy time / op "
       "time"},
      {"results", nlohmann::json::array()}};
  fmt::print("{:<8} {:>5} {:>4} {:>6} {:<7} {:>7} {:>7} | {:>6} {:>6} {:>6} {:>6} (% of copy)\n",
             "shape", "d", "E", "T", "routing", "meta us", "fixed", "disp", "disp'", "comb",
             "comb'");
  for (const auto& s : shapes) {
    for (const std::string routing : {"uniform", "zipf", "single"}) {
      const auto probs = logits_for(routing, s.T, s.E).softmax(-1);
      const auto options = moeprune::functional::TopKRoutingOptions(s.k);
      const auto fixed = moeprune::functional::TopKRoutingOptions(s.k).fixed_rows(true);
      const double t_meta =
          bench::time_gpu([&] { moeprune::functional::top_k_route(probs, options); }, reps);
      const double t_fixed =
          bench::time_gpu([&] { moeprune::functional::top_k_route(probs, fixed); }, reps);
      const auto plan = moeprune::functional::top_k_route(probs, options);
      const int64_t R = plan.num_rows(), T = s.T, d = s.d;
      const auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
      const auto x = torch::randn({T, d}, bf16);
      const auto y = torch::randn({R, d}, bf16);
      const auto g = torch::randn({T, d}, bf16);
      const auto w = plan.combine_weight.to(torch::kBFloat16);
      const int64_t row = d * 2;
      struct Op {
        const char* name;
        int64_t bytes;
        std::function<void()> body;
      };
      const std::vector<Op> ops = {
          {"dispatch", 2 * R * row, [&] { moeprune::ops::dispatch(x, plan); }},
          {"dispatch_backward", (R + T) * row, [&] { dispatch_backward(y, plan); }},
          {"combine", (R + T) * row, [&] { moeprune::ops::combine(y, w, plan); }},
          {"combine_backward", (T + 2 * R) * row, [&] { combine_backward(g, y, w, plan); }}};
      auto src = torch::empty({(T + 2 * R) * row / 2 + 1}, bf16.dtype(torch::kUInt8));
      auto dst = torch::empty_like(src);
      nlohmann::json entry = {{"shape", s.name},
                              {"d", d},
                              {"experts", s.E},
                              {"k", s.k},
                              {"tokens", T},
                              {"routing", routing},
                              {"rows", R},
                              {"routing_metadata_seconds", t_meta},
                              {"routing_metadata_fixed_rows_seconds", t_fixed}};
      std::vector<double> pct;
      for (const auto& op : ops) {
        const int64_t half = op.bytes / 2;
        const double t_op = bench::time_gpu(op.body, reps);
        const double t_copy =
            bench::time_gpu([&] { dst.narrow(0, 0, half).copy_(src.narrow(0, 0, half)); }, reps);
        pct.push_back(100.0 * t_copy / t_op);
        entry[op.name] = {{"seconds", t_op},
                          {"bytes", op.bytes},
                          {"GBps", static_cast<double>(op.bytes) / t_op / 1e9},
                          {"device_copy_seconds", t_copy},
                          {"device_copy_GBps", static_cast<double>(op.bytes) / t_copy / 1e9},
                          {"pct_of_copy", pct.back()}};
      }
      fmt::print(
          "{:<8} {:>5} {:>4} {:>6} {:<7} {:>7.1f} {:>7.1f} | {:>5.0f}% {:>5.0f}% {:>5.0f}% "
          "{:>5.0f}%\n",
          s.name, d, s.E, T, routing, 1e6 * t_meta, 1e6 * t_fixed, pct[0], pct[1], pct[2], pct[3]);
      results["results"].push_back(entry);
    }
  }
  bench::write_results(out, results);
  fmt::print("wrote {}\n", out);
  return 0;
}
