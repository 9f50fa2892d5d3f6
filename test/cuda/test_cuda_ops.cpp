// CUDA dispatch/combine against the CPU ops (the reference), and a layer on the GPU: every preset,
// group-limited routing with several groups and capacities that drop (test/layer_variants.h).
#include "../layer_variants.h"

#include <moeprune/layers/moe_layer.h>
#include <moeprune/ops/ops.h>
#include <moeprune/routing/functional/routing.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <string>

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

TEST_CASE("CUDA combine and its backward are bitwise repeatable", "[cuda][sanitize]") {
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

TEST_CASE("a MoE layer moved to CUDA runs forward and backward on the GPU", "[cuda][sanitize]") {
  for (const auto& name : test::layer_variant_names()) {
    INFO(name);
    torch::manual_seed(0);
    moeprune::MoELayer layer(test::layer_options(name, 64, 128, 8));
    test::init_variant(layer, name);
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

TEST_CASE("CUDA dispatch and combine take every row path: odd widths, offset views, wide rows",
          "[cuda][sanitize]") {
  // d 1, 7, 71: rows that are not whole 16-byte vectors in any dtype (the scalar path); 257 and
  // 4099: more elements than the 256 threads of a block (several passes per thread).
  const auto d = GENERATE(1, 7, 71, 257, 4099);
  const auto T = GENERATE(0, 1, 33);
  const auto E = GENERATE(1, 256);
  const auto c =
      GENERATE(Case{torch::kFloat, 1e-5}, Case{torch::kHalf, 2e-3}, Case{torch::kBFloat16, 2e-2});
  const int64_t k = std::min<int64_t>(2, E);
  INFO("d=" << d << " T=" << T << " E=" << E << " dtype=" << c.dtype);
  const auto plan = E >= 4 ? make_plan(T, E, k, static_cast<uint64_t>(d * 7 + T))
                           : moeprune::functional::top_k_route(torch::ones({T, E}).softmax(-1),
                                                               TopKRoutingOptions(k));
  const auto gpu = plan.to(torch::kCUDA);
  // Three layouts of the same tokens: contiguous, one element into a larger buffer (no row is
  // 16-byte aligned), and a column window of a wider tensor (row stride d + 3).
  const auto x = torch::randn({T, d}).to(c.dtype);
  auto shifted = torch::empty({T * d + 1}, c.dtype).narrow(0, 1, T * d).view({T, d});
  shifted.copy_(x);
  auto window = torch::empty({T, d + 3}, c.dtype).narrow(1, 2, d);
  window.copy_(x);
  const auto want_rows = ops::dispatch(x, plan);
  for (const auto& layout : {x, shifted, window}) {
    CHECK(torch::equal(ops::dispatch(layout.cuda(), gpu).cpu(), want_rows));
  }
  const auto y = torch::randn({plan.num_rows(), d}).to(c.dtype);
  const auto w = plan.combine_weight.to(c.dtype);
  const auto ref = ops::combine(y.to(torch::kFloat), w.to(torch::kFloat), plan);
  auto y_shifted = torch::empty({plan.num_rows() * d + 1}, c.dtype)
                       .narrow(0, 1, plan.num_rows() * d)
                       .view({plan.num_rows(), d});
  y_shifted.copy_(y);
  for (const auto& rows : {y, y_shifted}) {
    const auto got = ops::combine(rows.cuda(), w.cuda(), gpu).cpu().to(torch::kFloat);
    REQUIRE(got.sizes() == ref.sizes());
    CHECK(torch::allclose(got, ref, c.tolerance, c.tolerance));
  }
}

TEST_CASE("a MoE layer on CUDA equals the CPU layer in training, forward and backward", "[cuda]") {
  for (const auto& name : test::layer_variant_names()) {
    for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
      INFO(name << " " << dtype);
      torch::manual_seed(1);
      // No noise or jitter: both devices then route the same tokens the same way.
      auto options = test::layer_options(name, 64, 96, 8);
      moeprune::remove_training_noise(options.router());
      moeprune::MoELayer cpu(options);
      test::init_variant(cpu, name);
      cpu->to(dtype);
      moeprune::MoELayer gpu(std::dynamic_pointer_cast<moeprune::MoELayerImpl>(cpu->clone()));
      gpu->to(torch::kCUDA);
      cpu->train();
      gpu->train();
      const auto x = torch::randn({4, 32, 64}).to(dtype);
      const auto g = torch::randn({4, 32, 64}).to(dtype);
      auto xc = x.clone().requires_grad_(true), xg = x.cuda().requires_grad_(true);
      const auto out_c = cpu(xc), out_g = gpu(xg);
      CHECK(torch::equal(out_g.plan.expert_index.cpu(), out_c.plan.expert_index));
      CHECK(torch::equal(out_g.plan.slot_row.cpu(), out_c.plan.slot_row));
      if (name.find("+drops") != std::string::npos) {
        CHECK(out_c.plan.dropped_fraction() > 0.0);  // the capacity path really ran
      }
      ((out_c.output * g).sum() + out_c.aux_loss).backward();
      ((out_g.output * g.cuda()).sum() + out_g.aux_loss).backward();
      // fp32: the same sums in another order (cuBLAS vs CPU GEMMs); bf16: each side rounds its
      // GEMM outputs to bf16, a few steps of 2^-8 of the largest value.
      const double rel = dtype == torch::kFloat ? 1e-4 : 4.0 / 256;
      const auto close = [&](const torch::Tensor& got, const torch::Tensor& want) {
        const auto a = got.cpu().to(torch::kDouble), b = want.to(torch::kDouble);
        const double scale = std::max(b.abs().max().item<double>(), 1e-12);
        return (a - b).abs().max().item<double>() <= rel * scale;
      };
      CHECK(close(out_g.output, out_c.output));
      CHECK(close(out_g.aux_loss, out_c.aux_loss));
      CHECK(close(xg.grad(), xc.grad()));
      const auto pc = cpu->named_parameters(), pg = gpu->named_parameters();
      for (const auto& p : pc) {
        INFO(p.key());
        REQUIRE(p.value().grad().defined());
        CHECK(close(pg[p.key()].grad(), p.value().grad()));
      }
    }
  }
}
