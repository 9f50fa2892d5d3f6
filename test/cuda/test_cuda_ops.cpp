// CUDA dispatch/combine against the CPU ops (the reference), and a layer on the GPU.
#include <moeprune/layers/moe_layer.h>
#include <moeprune/ops/ops.h>
#include <moeprune/routing/functional/routing.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

namespace ops = moeprune::ops;
using moeprune::functional::CapacityMode;
using moeprune::functional::TopKRoutingOptions;

namespace {

// A plan on the CPU with drops (capacity) and empty experts (the last quarter never chosen).
moeprune::RoutingPlan make_plan(int64_t T, int64_t E, int64_t k, uint64_t seed) {
  torch::manual_seed(seed);
  auto logits = torch::randn({T, E}, torch::kDouble);
  logits.narrow(1, E - E / 4, E / 4).fill_(-100.0);
  const int64_t capacity = std::max<int64_t>(1, T * k / E);
  return moeprune::functional::top_k_route(
      logits.softmax(-1),
      TopKRoutingOptions(k).capacity_mode(CapacityMode::kFixed).expert_capacity(capacity));
}

struct Case {
  torch::ScalarType dtype;
  double tolerance;
};

}  // namespace

TEST_CASE("CUDA dispatch and combine match the CPU ops, forward and backward", "[cuda]") {
  const auto T = GENERATE(1, 7, 997, 4096);
  const auto E = GENERATE(8, 64, 128);
  const auto k = GENERATE(1, 2);
  const auto c =
      GENERATE(Case{torch::kFloat, 1e-5}, Case{torch::kHalf, 2e-3}, Case{torch::kBFloat16, 2e-2});
  INFO("T=" << T << " E=" << E << " k=" << k << " dtype=" << c.dtype);
  const auto plan = make_plan(T, E, k, static_cast<uint64_t>(T * 1000 + E * 10 + k));
  const auto gpu = plan.to(torch::kCUDA);
  const int64_t d = 72;  // 144 bytes in half: rows not a multiple of 16 bytes
  const auto x = torch::randn({T, d}).to(c.dtype);
  const auto y = torch::randn({plan.num_rows(), d}).to(c.dtype);
  const auto w = plan.combine_weight.to(c.dtype);
  const auto g = torch::randn({T, d}).to(c.dtype);

  CHECK(torch::equal(ops::dispatch(x.cuda(), gpu).cpu(), ops::dispatch(x, plan)));
  const auto ref = ops::combine(y.to(torch::kFloat), w.to(torch::kFloat), plan);
  const auto got = ops::combine(y.cuda(), w.cuda(), gpu).cpu().to(torch::kFloat);
  CHECK(torch::allclose(got, ref, c.tolerance, c.tolerance));

  auto yc = y.cuda().requires_grad_(true), wc = w.cuda().requires_grad_(true);
  (ops::combine(yc, wc, gpu).to(torch::kFloat) * g.cuda().to(torch::kFloat)).sum().backward();
  auto yr = y.to(torch::kFloat).requires_grad_(true), wr = w.to(torch::kFloat).requires_grad_(true);
  (ops::combine(yr, wr, plan) * g.to(torch::kFloat)).sum().backward();
  CHECK(torch::allclose(yc.grad().cpu().to(torch::kFloat), yr.grad(), c.tolerance, c.tolerance));
  CHECK(torch::allclose(wc.grad().cpu().to(torch::kFloat), wr.grad(), 10 * c.tolerance,
                        10 * c.tolerance));

  auto xc = x.cuda().requires_grad_(true);
  const auto grad_rows = torch::randn({plan.num_rows(), d}).to(c.dtype);
  (ops::dispatch(xc, gpu).to(torch::kFloat) * grad_rows.cuda().to(torch::kFloat)).sum().backward();
  auto xr = x.to(torch::kFloat).requires_grad_(true);
  (ops::dispatch(xr, plan) * grad_rows.to(torch::kFloat)).sum().backward();
  CHECK(torch::allclose(xc.grad().cpu().to(torch::kFloat), xr.grad(), c.tolerance, c.tolerance));
}

TEST_CASE("CUDA combine and its backward are bitwise repeatable", "[cuda]") {
  const auto plan = make_plan(4096, 64, 2, 3).to(torch::kCUDA);
  const auto y = torch::randn({plan.num_rows(), 1024}, torch::kCUDA).to(torch::kBFloat16);
  const auto w = plan.combine_weight.to(torch::kBFloat16);
  const auto g = torch::randn({4096, 1024}, torch::kCUDA).to(torch::kBFloat16);
  const auto first = ops::combine(y, w, plan);
  auto run_backward = [&] {
    auto yy = y.clone().requires_grad_(true), ww = w.clone().requires_grad_(true);
    (ops::combine(yy, ww, plan) * g).sum().backward();
    return std::make_pair(yy.grad(), ww.grad());
  };
  const auto [gy, gw] = run_backward();
  for (int i = 0; i < 3; ++i) {
    CHECK(torch::equal(ops::combine(y, w, plan), first));
    const auto [gy2, gw2] = run_backward();
    CHECK(torch::equal(gy2, gy));
    CHECK(torch::equal(gw2, gw));
  }
}

TEST_CASE("a MoE layer moved to CUDA runs forward and backward on the GPU", "[cuda]") {
  for (const auto& name : moeprune::MoELayerOptions::preset_names()) {
    INFO(name);
    torch::manual_seed(0);
    moeprune::MoELayer layer(moeprune::MoELayerOptions::preset(name, 64, 128, 8));
    layer->to(torch::kCUDA);
    const auto x = torch::randn({4, 32, 64}, torch::kCUDA).requires_grad_(true);
    const auto out = layer(x);
    CHECK(out.output.is_cuda());
    CHECK(out.plan.slot_row.is_cuda());
    (out.output.square().mean() + out.aux_loss).backward();
    CHECK(x.grad().is_cuda());
    for (const auto& p : layer->parameters()) {
      CHECK(p.grad().defined());
    }
    // The same layer on the CPU gives the same output (eval mode: no noise).
    layer->eval();
    torch::NoGradGuard no_grad;
    const auto on_gpu = layer(x.detach()).output.cpu();
    layer->to(torch::kCPU);
    CHECK(torch::allclose(on_gpu, layer(x.detach().cpu()).output, 1e-4, 1e-5));
  }
}
