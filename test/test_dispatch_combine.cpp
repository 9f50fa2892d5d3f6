#include "test_helpers.h"

#include <moeprune/ops/ops.h>
#include <moeprune/routing/functional/routing.h>

using moeprune::functional::CapacityMode;
using moeprune::functional::TopKRoutingOptions;
namespace ops = moeprune::ops;

namespace {

// A plan with drops (capacity 2 per expert for 10 tokens x 2 slots over 4 experts) and an empty
// expert (expert 3 is never chosen).
moeprune::RoutingPlan plan_with_drops(int64_t T = 10) {
  torch::manual_seed(5);
  auto logits = torch::randn({T, 4}, torch::kDouble);
  logits.select(1, 3).fill_(-100.0);
  return moeprune::functional::top_k_route(
      logits.softmax(-1),
      TopKRoutingOptions(2).capacity_mode(CapacityMode::kFixed).expert_capacity(4));
}

torch::Tensor naive_dispatch(const torch::Tensor& x, const moeprune::RoutingPlan& plan) {
  const int64_t K = plan.slots_per_token();
  auto out = torch::zeros({plan.num_rows(), x.size(1)}, x.options());
  for (int64_t r = 0; r < plan.num_rows(); ++r) {
    out[r] = x[plan.row_slot[r].item<int64_t>() / K];
  }
  return out;
}

torch::Tensor naive_combine(const torch::Tensor& y, const torch::Tensor& w,
                            const moeprune::RoutingPlan& plan) {
  auto out = torch::zeros({plan.num_tokens(), y.size(1)}, y.options());
  for (int64_t t = 0; t < plan.num_tokens(); ++t) {
    for (int64_t j = 0; j < plan.slots_per_token(); ++j) {
      const int64_t r = plan.slot_row[t][j].item<int64_t>();
      if (r >= 0) {
        out[t] += w[t][j] * y[r];
      }
    }
  }
  return out;
}

// Central finite differences of the scalar f at x, in double.
torch::Tensor numerical_grad(const std::function<torch::Tensor(const torch::Tensor&)>& f,
                             const torch::Tensor& x, double eps = 1e-6) {
  torch::NoGradGuard no_grad;
  auto grad = torch::zeros_like(x);
  auto xf = x.clone().view({-1});
  auto gf = grad.view({-1});
  for (int64_t i = 0; i < xf.numel(); ++i) {
    const double v = xf[i].item<double>();
    xf[i] = v + eps;
    const double up = f(xf.view(x.sizes())).item<double>();
    xf[i] = v - eps;
    const double down = f(xf.view(x.sizes())).item<double>();
    xf[i] = v;
    gf[i] = (up - down) / (2 * eps);
  }
  return grad;
}

}  // namespace

TEST_CASE("dispatch and combine match naive index loops") {
  const auto plan = plan_with_drops();
  REQUIRE(plan.num_rows() < 20);  // some slots dropped
  REQUIRE(plan.counts()[3] == 0);
  const auto x = torch::randn({10, 7}, torch::kDouble);
  const auto rows = ops::dispatch(x, plan);
  CHECK(torch::equal(rows, naive_dispatch(x, plan)));

  const auto y = torch::randn({plan.num_rows(), 7}, torch::kDouble);
  const auto w = plan.combine_weight.to(torch::kDouble);
  CHECK(torch::allclose(ops::combine(y, w, plan), naive_combine(y, w, plan), 1e-12, 1e-12));
}

TEST_CASE("dispatch and combine work in float, half and bfloat16 against a double reference") {
  const auto plan = plan_with_drops(33);
  const auto x = torch::randn({33, 24}, torch::kDouble);
  const auto y = torch::randn({plan.num_rows(), 24}, torch::kDouble);
  const auto w = plan.combine_weight.to(torch::kDouble);
  const auto ref = naive_combine(y, w, plan);
  struct Case {
    torch::ScalarType dtype;
    double tolerance;  // relative to the values' scale: the input rounding of each dtype
  };
  for (const auto& c :
       {Case{torch::kFloat, 1e-6}, Case{torch::kHalf, 4e-3}, Case{torch::kBFloat16, 3e-2}}) {
    INFO("dtype " << c.dtype);
    // dispatch copies bits exactly.
    CHECK(torch::equal(ops::dispatch(x.to(c.dtype), plan), naive_dispatch(x, plan).to(c.dtype)));
    const auto got = ops::combine(y.to(c.dtype), w.to(c.dtype), plan).to(torch::kDouble);
    CHECK(torch::allclose(got, ref, c.tolerance, c.tolerance));
  }
}

TEST_CASE("dispatch and combine gradients match finite differences in double") {
  const auto plan = plan_with_drops();
  const auto x = torch::randn({10, 3}, torch::kDouble);
  const auto y = torch::randn({plan.num_rows(), 3}, torch::kDouble);
  const auto w = plan.combine_weight.to(torch::kDouble).detach();
  const auto g_rows = torch::randn({plan.num_rows(), 3}, torch::kDouble);
  const auto g_out = torch::randn({10, 3}, torch::kDouble);

  SECTION("dispatch w.r.t. its input") {
    auto xv = x.clone().requires_grad_(true);
    (ops::dispatch(xv, plan) * g_rows).sum().backward();
    const auto numeric = numerical_grad(
        [&](const torch::Tensor& v) { return (ops::dispatch(v, plan) * g_rows).sum(); }, x);
    CHECK(torch::allclose(xv.grad(), numeric, 1e-7, 1e-7));
  }
  SECTION("combine w.r.t. expert outputs and weights") {
    auto yv = y.clone().requires_grad_(true);
    auto wv = w.clone().requires_grad_(true);
    (ops::combine(yv, wv, plan) * g_out).sum().backward();
    const auto dy = numerical_grad(
        [&](const torch::Tensor& v) { return (ops::combine(v, w, plan) * g_out).sum(); }, y);
    const auto dw = numerical_grad(
        [&](const torch::Tensor& v) { return (ops::combine(y, v, plan) * g_out).sum(); }, w);
    CHECK(torch::allclose(yv.grad(), dy, 1e-7, 1e-7));
    CHECK(torch::allclose(wv.grad(), dw, 1e-7, 1e-7));
    // Dropped slots get no weight gradient.
    CHECK(wv.grad().masked_select(plan.slot_row.lt(0)).eq(0).all().item<bool>());
  }
}

TEST_CASE("combine is bitwise deterministic across runs and thread counts") {
  torch::manual_seed(9);
  const auto plan =
      moeprune::functional::top_k_route(torch::randn({4096, 8}).softmax(-1), TopKRoutingOptions(2));
  const auto y = torch::randn({plan.num_rows(), 64});
  const auto w = plan.combine_weight;
  const auto first = ops::combine(y, w, plan);
  const int threads = at::get_num_threads();
  for (int n : {1, 2, threads}) {
    at::set_num_threads(n);
    CHECK(torch::equal(ops::combine(y, w, plan), first));
  }
  at::set_num_threads(threads);
}

TEST_CASE("dispatch and combine refuse malformed indices with a clear message") {
  const auto plan = plan_with_drops();
  const auto x = torch::randn({10, 4});
  const auto y = torch::randn({plan.num_rows(), 4});
  const auto w = plan.combine_weight.to(torch::kFloat);
  REQUIRE_THROWS_AS(ops::dispatch(x.view({-1}), plan), c10::Error);
  REQUIRE_THROWS_WITH(ops::dispatch(x.view({-1}), plan),
                      Catch::Contains("input should be a 2-D [tokens, d] tensor"));
  REQUIRE_THROWS_WITH(ops::dispatch(torch::randn({9, 4}), plan),
                      Catch::Contains("input has 9 tokens but slot_row has 10"));
  REQUIRE_THROWS_WITH(ops::dispatch(x, plan.slot_row.to(torch::kInt), plan.row_slot),
                      Catch::Contains("slot_row should be int64"));
  REQUIRE_THROWS_WITH(ops::combine(y.narrow(0, 0, 1), w, plan),
                      Catch::Contains("expert_output has 1 rows but row_slot names"));
  REQUIRE_THROWS_WITH(ops::combine(y, w.to(torch::kDouble), plan),
                      Catch::Contains("weight and expert_output should have one dtype"));
  auto bad_rows = plan.row_slot.clone();
  bad_rows[0] = 1000;
  REQUIRE_THROWS_WITH(ops::dispatch(x, plan.slot_row, bad_rows),
                      Catch::Contains("row_slot[0] = 1000 is outside the slots [0, 20)"));
  auto bad_slots = plan.slot_row.clone();
  bad_slots[0][0] = 999;
  REQUIRE_THROWS_WITH(ops::combine(y, w, bad_slots, plan.row_slot),
                      Catch::Contains("slot_row[0, 0] = 999 is outside the"));
}

TEST_CASE("dispatch and combine take non-contiguous and offset views as their copies") {
  const auto plan = plan_with_drops();
  const int64_t R = plan.num_rows();
  for (const auto dtype : {torch::kDouble, torch::kFloat, torch::kBFloat16}) {
    INFO("dtype " << dtype);
    // Tokens: a transposed view, rows at an offset, a column window (row stride 11 != d = 7).
    const std::vector<torch::Tensor> inputs = {
        torch::randn({7, 10}, torch::kDouble).to(dtype).t(),
        torch::randn({15, 7}, torch::kDouble).to(dtype).narrow(0, 3, 10),
        torch::randn({10, 11}, torch::kDouble).to(dtype).narrow(1, 2, 7)};
    for (const auto& x : inputs) {
      INFO("sizes " << x.sizes() << " strides " << x.strides() << " offset " << x.storage_offset());
      CHECK(torch::equal(ops::dispatch(x, plan), naive_dispatch(x.contiguous(), plan)));
    }
    // Expert outputs at an offset and in a column window; weights transposed from [K, T].
    const auto y =
        torch::randn({R + 4, 13}, torch::kDouble).to(dtype).narrow(0, 2, R).narrow(1, 3, 7);
    const auto w = plan.combine_weight.to(dtype).t().contiguous().t();
    REQUIRE_FALSE(y.is_contiguous());
    REQUIRE_FALSE(w.is_contiguous());
    const auto got = ops::combine(y, w, plan);
    const auto want = ops::combine(y.contiguous(), w.contiguous(), plan);
    // The same kernel on the same values: bitwise equal; and close to the naive loop.
    CHECK(torch::equal(got, want));
    CHECK(torch::allclose(
        got.to(torch::kDouble),
        naive_combine(y.to(torch::kDouble).contiguous(), w.to(torch::kDouble).contiguous(), plan),
        dtype == torch::kBFloat16 ? 2e-2 : 1e-5, 1e-5));
  }
}
