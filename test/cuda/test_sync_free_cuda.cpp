// The sync-free layer on the GPU: no host read in forward and backward (torch's sync debug mode
// turns any into an error), the same function as the exact layout, the gradients of its grouped
// GEMMs against the CPU layer's, capture in a CUDA graph with replay on new inputs, and an
// out-of-range index reported as an error (in a child process: a device-side assert ends the CUDA
// context it happens in).
#include "../layer_variants.h"

#include <moeprune/layers/moe_layer.h>
#include <moeprune/ops/ops.h>

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <unistd.h>

#include <sys/wait.h>
#include <algorithm>
#include <array>
#include <cstdio>
#include <string>

using moeprune::MoELayer;
using moeprune::MoELayerOptions;

namespace {

// Presets the sync-free path serves (not E3-MoE: its router joins member plans by size), and
// group-limited routing with 2 groups of which 1 is kept (test/layer_variants.h).
const std::vector<std::string> kSyncFreePresets{"vmoe",
                                                "expert_choice",
                                                "switch",
                                                "top_k_gated",
                                                "group_limited_softmax",
                                                "group_limited_sigmoid",
                                                "group_limited_softmax+groups",
                                                "group_limited_sigmoid+groups"};

MoELayerOptions layer_options(const std::string& preset) {
  auto options = test::layer_options(preset, 128, 256, 8).check_finite(false);
  if (preset == "switch") {
    options.routing().expert_capacity(16);  // drops at these sizes
  }
  return options;
}

MoELayer make_layer(const std::string& preset, bool sync_free, uint64_t seed) {
  torch::manual_seed(seed);
  MoELayer layer(layer_options(preset).sync_free(sync_free));
  test::init_variant(layer, preset);
  layer->to(torch::kCUDA, torch::kBFloat16);
  return layer;
}

// Turns every host synchronisation torch makes on the current thread into an error.
struct SyncIsError {
  SyncIsError() {
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
  }
  ~SyncIsError() {
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
  }
  SyncIsError(const SyncIsError&) = delete;
  SyncIsError& operator=(const SyncIsError&) = delete;
};

}  // namespace

TEST_CASE("a sync-free layer in bf16 reads nothing back from the GPU, forward and backward",
          "[cuda][sanitize]") {
  for (const auto& preset : kSyncFreePresets) {
    INFO(preset);
    auto exact = make_layer(preset, false, 3);
    auto sync_free = make_layer(preset, true, 3);
    CHECK(sync_free->experts()->grouped_gemm_supported(
        torch::empty({1, 128}, torch::TensorOptions(torch::kCUDA).dtype(torch::kBFloat16))));
    // No noise: the two layers route alike.
    exact->eval();
    sync_free->train();
    const auto input =
        torch::randn({4, 64, 128}, torch::TensorOptions(torch::kCUDA).dtype(torch::kBFloat16));
    const auto x = input.clone().requires_grad_(true);
    {
      const SyncIsError no_sync;
      const auto out = sync_free->forward(x);
      (out.output.to(torch::kFloat).square().mean() + out.aux_loss).backward();
    }
    CHECK(x.grad().defined());
    for (const auto& p : sync_free->parameters()) {
      CHECK(p.grad().defined());
    }
    sync_free->eval();
    torch::NoGradGuard no_grad;
    const auto a = exact->forward(input), b = sync_free->forward(input);
    CHECK(torch::equal(a.plan.slot_row, b.plan.slot_row));
    // The grouped GEMM and the per-expert GEMMs round bf16 differently (fp32 accumulation).
    CHECK(torch::allclose(a.output.to(torch::kFloat), b.output.to(torch::kFloat), 2e-2, 2e-2));
  }
}

TEST_CASE("a sync-free layer's grouped GEMMs on the GPU give the CPU layer's gradients", "[cuda]") {
  for (const auto& preset : kSyncFreePresets) {
    INFO(preset);
    // The reference: the exact-layout layer on the CPU in fp32, holding the bf16 weights exactly.
    // No noise or jitter, so both route the same tokens alike (the router's logits are fp32 on
    // both devices).
    torch::manual_seed(21);
    auto options = layer_options(preset);
    moeprune::remove_training_noise(options.router());
    MoELayer cpu(options);
    test::init_variant(cpu, preset);
    cpu->to(torch::kBFloat16);
    cpu->to(torch::kFloat);
    MoELayer gpu(MoELayerOptions(options).sync_free(true));
    gpu->to(torch::kCUDA, torch::kBFloat16);
    {
      torch::NoGradGuard no_grad;
      const auto from = cpu->named_parameters();
      for (auto& p : gpu->named_parameters()) {
        p.value().copy_(from[p.key()]);
      }
      const auto buffers = cpu->named_buffers();
      for (auto& b : gpu->named_buffers()) {
        b.value().copy_(buffers[b.key()]);
      }
    }
    const auto bf16 = torch::TensorOptions(torch::kCUDA).dtype(torch::kBFloat16);
    REQUIRE(gpu->experts()->grouped_gemm_supported(torch::empty({1, 128}, bf16)));
    cpu->train();
    gpu->train();
    const auto x = torch::randn({4, 64, 128}).to(torch::kBFloat16);
    const auto g = torch::randn({4, 64, 128}).to(torch::kBFloat16);
    auto xc = x.to(torch::kFloat).requires_grad_(true), xg = x.cuda().requires_grad_(true);
    const auto out_c = cpu->forward(xc), out_g = gpu->forward(xg);
    REQUIRE(torch::equal(out_g.plan.slot_row.cpu(), out_c.plan.slot_row));
    ((out_c.output * g.to(torch::kFloat)).sum() + out_c.aux_loss).backward();
    ((out_g.output.to(torch::kFloat) * g.cuda().to(torch::kFloat)).sum() + out_g.aux_loss)
        .backward();
    // The GPU rounds each GEMM's output to bf16 (fp32 accumulation): a few steps of 2^-8 of the
    // largest value; a row sent to the wrong expert or a lost gradient is of the value's size.
    const auto close = [](const torch::Tensor& got, const torch::Tensor& want) {
      const auto a = got.cpu().to(torch::kDouble), b = want.to(torch::kDouble);
      const double scale = std::max(b.abs().max().item<double>(), 1e-12);
      const double error = (a - b).abs().max().item<double>() / scale;
      UNSCOPED_INFO("max error " << error << " of the largest value " << scale);
      return error <= 4.0 / 256;
    };
    CHECK(close(out_g.output, out_c.output));
    CHECK(close(out_g.aux_loss, out_c.aux_loss));
    CHECK(close(xg.grad(), xc.grad()));
    const auto grads = cpu->named_parameters();
    for (const auto& p : gpu->named_parameters()) {
      INFO(p.key());
      REQUIRE(p.value().grad().defined() == grads[p.key()].grad().defined());
      if (p.value().grad().defined()) {
        CHECK(close(p.value().grad(), grads[p.key()].grad()));
      }
    }
  }
}

TEST_CASE("a sync-free layer captured in a CUDA graph replays on new inputs as it runs eagerly",
          "[cuda]") {
  const auto pruned = GENERATE(false, true);
  INFO("pruned " << pruned);
  auto layer = make_layer("top_k_gated", true, 4);
  if (pruned) {
    layer->keep_experts({0, 1, 3, 4, 6});
  }
  layer->eval();
  torch::NoGradGuard no_grad;
  const auto opts = torch::TensorOptions(torch::kCUDA).dtype(torch::kBFloat16);
  auto static_input = torch::randn({1, 256, 128}, opts);
  // Warm-up and capture on a side stream, as CUDA graph capture asks.
  const auto stream = c10::cuda::getStreamFromPool();
  at::cuda::CUDAGraph graph;
  torch::Tensor static_output;
  {
    const c10::cuda::CUDAStreamGuard on_side(stream);
    for (int i = 0; i < 3; ++i) {
      layer->forward(static_input);
    }
    graph.capture_begin();
    static_output = layer->forward(static_input).output;
    graph.capture_end();
  }
  torch::cuda::synchronize();
  for (int i = 0; i < 3; ++i) {
    const auto x = torch::randn({1, 256, 128}, opts);
    static_input.copy_(x);
    graph.replay();
    torch::cuda::synchronize();
    INFO("replay " << i);
    // The same kernels on the same inputs: bitwise the eager result.
    CHECK(torch::equal(static_output, layer->forward(x).output));
  }
}

TEST_CASE("child: CUDA dispatch with an out-of-range row slot", "[.cuda_child]") {
  const auto x = torch::randn({4, 8}, torch::kCUDA);
  const auto slot_row = torch::tensor({{0}, {1}, {2}, {3}}, torch::kLong).cuda();
  const auto row_slot = torch::tensor({0, 1, 1000, 3}, torch::kLong).cuda();
  CHECK_THROWS_WITH(
      [&] {
        moeprune::ops::dispatch(x, slot_row, row_slot);
        torch::cuda::synchronize();
      }(),
      Catch::Contains("device-side assert triggered"));
}

TEST_CASE("an out-of-range index on the GPU is reported as an error, not a wrong result",
          "[cuda]") {
  std::array<char, 4096> exe{};
  const auto n = readlink("/proc/self/exe", exe.data(), exe.size() - 1);
  REQUIRE(n > 0);
  const std::string command = "'" + std::string(exe.data(), static_cast<size_t>(n)) +
                              "' 'child: CUDA dispatch with an out-of-range row slot' 2>&1";
  FILE* child = popen(command.c_str(), "r");
  REQUIRE(child != nullptr);
  std::string output;
  std::array<char, 512> buffer{};
  while (fgets(buffer.data(), static_cast<int>(buffer.size()), child) != nullptr) {
    output += buffer.data();
  }
  const int status = pclose(child);
  INFO(output);
  // The child's check passed (the error reached the host as an exception) and the kernel named
  // the failed condition.
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK_THAT(output, Catch::Contains("s >= -1 && s < num_slots"));
}
