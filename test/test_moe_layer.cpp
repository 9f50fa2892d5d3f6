#include "test_helpers.h"

#include <moeprune/layers/moe_layer.h>

using moeprune::MoELayer;
using moeprune::MoELayerOptions;

namespace {

// Expert e of the layer's bank applied to x, from its parameters.
torch::Tensor naive_expert(MoELayer& layer, int64_t e, const torch::Tensor& x) {
  auto& bank = layer->experts();
  if (bank->options.kind() == moeprune::ExpertKind::kGated) {
    return (torch::silu(x.matmul(bank->w1[e])) * x.matmul(bank->w3[e])).matmul(bank->w2[e]);
  }
  auto h = x.matmul(bank->w1[e]);
  if (bank->b1.defined()) {
    h = h + bank->b1[e];
  }
  h = bank->options.activation() == moeprune::ExpertActivation::kRelu ? torch::relu(h)
                                                                      : torch::gelu(h, "tanh");
  h = h.matmul(bank->w2[e]);
  return bank->b2.defined() ? h + bank->b2[e] : h;
}

// The layer's output computed token by token from a reference routing.
torch::Tensor naive_layer(MoELayer& layer, const torch::Tensor& x, const naive::Routing& ref) {
  auto out = torch::zeros_like(x);
  for (size_t t = 0; t < ref.slots.size(); ++t) {
    for (const auto& s : ref.slots[t]) {
      if (s.kept) {
        out[t] += s.weight * naive_expert(layer, s.expert, x[t].unsqueeze(0)).squeeze(0);
      }
    }
  }
  return out;
}

}  // namespace

TEST_CASE("mixtral layer equals softmax top-2, renormalised, over SwiGLU experts") {
  torch::manual_seed(11);
  MoELayer layer(MoELayerOptions::preset("top_k_gated", 12, 20, 4));
  const auto x = torch::randn({9, 12});
  const auto out = layer(x);
  const auto probs = x.matmul(layer->router().router_weight().t()).softmax(-1);
  const auto ref = naive::top_k(test::to_matrix(probs), 2, -1, 0, false, /*renormalize=*/true);
  CHECK(torch::allclose(out.output, naive_layer(layer, x, ref), 1e-4, 1e-5));
  CHECK(out.plan.num_rows() == 18);
}

TEST_CASE("vmoe layer in evaluation drops over capacity and weights by the raw gate") {
  torch::manual_seed(12);
  auto options = MoELayerOptions::preset("vmoe", 8, 16, 4);
  options.routing().capacity_factor(0.5).capacity_multiple(1).batch_priority(true).group_size(10);
  MoELayer layer(options);
  layer->eval();
  const auto x = torch::randn({20, 8});
  const auto out = layer(x);
  const auto probs = x.matmul(layer->router().router_weight().t()).softmax(-1);
  const int64_t C = naive::capacity(10, 2, 0.5, 4, 1);
  const auto ref = naive::top_k(test::to_matrix(probs), 2, C, 10, true, false);
  CHECK(out.plan.dropped_fraction() > 0.0);
  CHECK(torch::allclose(out.output, naive_layer(layer, x, ref), 1e-4, 1e-5));
}

TEST_CASE("switch layer applies its capacity per sequence of a [B, S, d] input") {
  torch::manual_seed(13);
  auto options = MoELayerOptions::preset("switch", 8, 16, 2);
  options.routing().expert_capacity(2);
  MoELayer layer(options);
  layer->eval();
  const auto x = torch::randn({3, 5, 8});
  const auto out = layer(x);
  CHECK(out.output.sizes() == x.sizes());
  CHECK(out.plan.group_size == 5);
  // At most 2 tokens per expert and sequence: at most 3 * 2 * 2 rows.
  CHECK(out.plan.num_rows() <= 12);
  const auto probs = x.reshape({15, 8}).matmul(layer->router().router_weight().t()).softmax(-1);
  const auto ref = naive::top_k(test::to_matrix(probs), 1, 2, 5, false, false);
  CHECK(torch::allclose(out.output.reshape({15, 8}), naive_layer(layer, x.reshape({15, 8}), ref),
                        1e-4, 1e-5));
}

TEST_CASE("every preset trains on a toy regression task") {
  const auto name = GENERATE(from_range(MoELayerOptions::preset_names()));
  INFO("preset " << name);
  torch::manual_seed(21);
  const int64_t d = 16;
  MoELayer layer(MoELayerOptions::preset(name, d, 32, 4));
  // Target: a fixed smooth function of the token.
  const auto A = torch::randn({d, d}) / std::sqrt(static_cast<double>(d));
  const auto x = torch::randn({8, 16, d});
  const auto target = torch::sin(x.matmul(A));
  const auto eval_loss = [&] {
    torch::NoGradGuard no_grad;
    layer->eval();
    const auto l = torch::mse_loss(layer(x).output, target).item<double>();
    layer->train();
    return l;
  };
  const double before = eval_loss();
  torch::optim::Adam opt(layer->parameters(), torch::optim::AdamOptions(1e-2));
  for (int step = 0; step < 150; ++step) {
    opt.zero_grad();
    const auto out = layer(x);
    (torch::mse_loss(out.output, target) + out.aux_loss).backward();
    opt.step();
  }
  const double after = eval_loss();
  INFO("loss " << before << " -> " << after);
  // A stated margin: the loss at least halves in 150 steps.
  CHECK(after < 0.5 * before);
}

TEST_CASE("every preset reports its auxiliary losses") {
  torch::manual_seed(22);
  for (const auto& name : MoELayerOptions::preset_names()) {
    INFO("preset " << name);
    MoELayer layer(MoELayerOptions::preset(name, 8, 16, 4));
    const auto out = layer(torch::randn({4, 6, 8}));
    CHECK(out.aux_loss.dim() == 0);
    CHECK(std::isfinite(out.aux_loss.item<double>()));
    CHECK(out.losses.z_loss.item<double>() > 0.0);
  }
}

TEST_CASE("removing experts that no token reaches leaves the output bitwise unchanged") {
  torch::manual_seed(23);
  MoELayer layer(MoELayerOptions::preset("top_k_gated", 8, 16, 4));
  {
    torch::NoGradGuard no_grad;
    layer->router().router_weight()[3].fill_(0);  // expert 3: logit 0 ...
    layer->router().router_weight()[3][0] = -50;  // ... far below the others for x[0] > 0
  }
  const auto x = torch::rand({10, 8}) + 0.5;
  const auto before = layer(x);
  REQUIRE(before.plan.counts()[3] == 0);
  layer->keep_experts({0, 1, 2});
  const auto after = layer(x);
  CHECK(torch::equal(before.output, after.output));
}

TEST_CASE("MoE layer refuses bad input with a clear message") {
  MoELayer layer(MoELayerOptions::preset("vmoe", 8, 16, 4));
  REQUIRE_THROWS_AS(layer(torch::randn({8})), c10::Error);
  REQUIRE_THROWS_WITH(layer(torch::randn({8})), Catch::Contains("at least 2 dims"));
  REQUIRE_THROWS_WITH(layer(torch::randn({3, 7})),
                      Catch::Contains("input width 7 does not match d_model = 8"));
  auto x = torch::randn({3, 8});
  x[0][0] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_WITH(layer(x), Catch::Contains("NaN or inf"));
  REQUIRE_THROWS_WITH(layer->keep_experts({}), Catch::Contains("keeping 0 experts"));
  REQUIRE_THROWS_WITH(MoELayerOptions::preset("gshard", 8, 16, 4),
                      Catch::Contains("unknown preset 'gshard'"));
  REQUIRE_THROWS_WITH(MoELayer(MoELayerOptions::preset("vmoe", 8, 16, 1)),
                      Catch::Contains("k should be in [1, E = 1], got k = 2"));
}
