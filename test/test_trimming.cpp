#include <moeprune/models/vision/trimming.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include "compression_helpers.h"

namespace cm = moeprune::compression;
using moeprune::VisionTransformer;

namespace {

// Makes MoE block `block`'s sub-block output zero: its MoE adds nothing to the residual stream.
void silence_moe(VisionTransformer& m, int64_t block) {
  torch::NoGradGuard no_grad;
  auto bank = m->blocks[block]->moe->experts();
  bank->w2.zero_();
  bank->b2.zero_();
}

// Makes block `block` the identity: attention projection and MLP output zero.
void make_identity(VisionTransformer& m, int64_t block) {
  torch::NoGradGuard no_grad;
  auto& b = m->blocks[block];
  b->proj->weight.zero_();
  b->proj->bias.zero_();
  if (b->is_moe()) {
    silence_moe(m, block);
  } else {
    b->fc2->weight.zero_();
    b->fc2->bias.zero_();
  }
}

}  // namespace

TEST_CASE("layer drop removes the MoE layer that is the identity, and the output stays") {
  torch::manual_seed(1);
  VisionTransformer m(test::tiny_vit(4, {1, 3}));
  silence_moe(m, 3);
  const auto x = torch::randn({4, 1, 28, 28});
  const auto data = test::one_batch(x);
  const auto sim = cm::moe_layer_similarity(m, data);
  REQUIRE(sim.size() == 2);
  CHECK(sim.at(3) == Approx(1.0).epsilon(1e-9));
  CHECK(sim.at(1) < 0.999);
  const auto before = test::eval_logits(m, x);
  const auto params = test::parameter_count(m);
  const int64_t moe_params = 8 * (16 * 24 + 24 + 24 * 16 + 16) + 16 * 8 + 2 * 16;  // + router, ln2
  CHECK(cm::layer_drop(m, data, 1) == std::vector<int64_t>{3});
  CHECK(m->options.dropped_mlp_blocks() == std::vector<int64_t>{3});
  CHECK(m->moe_layers().size() == 1);
  CHECK(test::parameter_count(m) == params - moe_params);
  CHECK(torch::equal(test::eval_logits(m, x), before));
  auto loaded = test::round_trip(m, "layer_drop");
  CHECK(torch::equal(test::eval_logits(loaded, x), before));
  CHECK_THROWS_WITH(cm::layer_drop(m, data, 2),
                    Catch::Contains("cannot drop 2 of the 1 MoE layers"));
}

TEST_CASE("block drop removes the block that is the identity, discrete or consecutive") {
  torch::manual_seed(2);
  VisionTransformer m(test::tiny_vit(4, {1, 3}));
  make_identity(m, 2);
  const auto x = torch::randn({4, 1, 28, 28});
  const auto data = test::one_batch(x);
  const auto sim = cm::block_similarity(m, data);
  REQUIRE(sim.size() == 4);
  CHECK(sim[2] == Approx(1.0).epsilon(1e-9));
  for (const int64_t i : {0, 1, 3}) CHECK(sim[static_cast<size_t>(i)] < 0.999);
  const auto before = test::eval_logits(m, x);
  CHECK(cm::block_drop(m, data, 1) == std::vector<int64_t>{2});
  CHECK(torch::allclose(test::eval_logits(m, x), before, 1e-5, 1e-6));
  auto loaded = test::round_trip(m, "block_drop");
  CHECK(torch::equal(test::eval_logits(loaded, x), test::eval_logits(m, x)));

  // Blocks 1 and 2 are the identity together: the consecutive run of two is {1, 2}.
  torch::manual_seed(3);
  VisionTransformer c(test::tiny_vit(4, {1, 3}));
  make_identity(c, 1);
  make_identity(c, 2);
  const auto span2 = cm::block_similarity(c, data, 2);
  REQUIRE(span2.size() == 3);
  CHECK(span2[1] == Approx(1.0).epsilon(1e-9));
  CHECK(cm::block_drop(c, data, 2, /*consecutive=*/true) == std::vector<int64_t>{1, 2});
  CHECK(c->moe_layers().size() == 1);
  CHECK_THROWS_WITH(cm::block_drop(c, data, 2), Catch::Contains("cannot drop 2 of the 2 blocks"));
}

TEST_CASE("block similarity averages each pair over its own tokens in an E3-MoE") {
  // MoE only in block 3: blocks 0-2 see each image once, block 3 twice (one copy per member).
  torch::manual_seed(5);
  VisionTransformer m(test::tiny_vit(4, {3}, "small_e3moe"));
  make_identity(m, 1);
  const auto x = torch::randn({4, 1, 28, 28});
  const auto sim = cm::block_similarity(m, test::one_batch(x));
  CHECK(sim[1] == Approx(1.0).epsilon(1e-9));
  CHECK(cm::block_drop(m, test::one_batch(x), 1) == std::vector<int64_t>{1});
}

TEST_CASE("expert drop removes the experts with the lowest summed gate, router rows too") {
  torch::manual_seed(4);
  VisionTransformer m(test::tiny_vit());
  const auto x = torch::randn({6, 1, 28, 28});
  // The reference: softmax gates of the MoE layer's input tokens, summed by hand.
  torch::Tensor tokens;
  {
    torch::NoGradGuard no_grad;
    m->eval();
    const moeprune::MoECapture capture(test::view(m)->layers(), /*with_inputs=*/true);
    m->forward(x);
    tokens = capture.calls(1).at(0).input;
  }
  const auto router = m->blocks[1]->moe->router().router_weight().detach();
  const auto gates = tokens.mm(router.t()).softmax(-1).sum(0);
  const auto order = std::get<1>(gates.sort());
  std::vector<int64_t> lowest = {order[0].item<int64_t>(), order[1].item<int64_t>()};
  std::sort(lowest.begin(), lowest.end());

  const auto plan =
      cm::expert_drop(*test::view(m, test::one_batch(x)), cm::ExpertDropOptions().per_layer(2));
  CHECK(plan.layers.at(0).pruned == lowest);
  CHECK(m->blocks[1]->moe->router().num_experts() == 6);
  CHECK(m->blocks[1]->moe->experts()->num_held() == 6);
  CHECK(m->blocks[1]->moe->state().router_rows_dropped);

  torch::manual_seed(4);
  VisionTransformer kept(test::tiny_vit());
  cm::expert_drop(*test::view(kept, test::one_batch(x)),
                  cm::ExpertDropOptions().total(3).remove_router_rows(false));
  CHECK(kept->blocks[1]->moe->router().num_experts() == 8);
  CHECK(kept->blocks[1]->moe->experts()->num_held() == 5);
  CHECK_THROWS_WITH(cm::expert_drop(*test::view(kept, test::one_batch(x)), cm::ExpertDropOptions()),
                    Catch::Contains("exactly one of them"));
  CHECK_THROWS_WITH(
      cm::expert_drop(*test::view(kept, test::one_batch(x)), cm::ExpertDropOptions().per_layer(1)),
      Catch::Contains("already pruned"));
}
