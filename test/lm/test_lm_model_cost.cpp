// What a language model costs (models/lm/model_cost.h), against counts worked out by hand for a
// tiny Mixtral-style model.
#include <moeprune/models/lm/model_cost.h>
#include <moeprune/models/lm/moe_view.h>
#include <moeprune/pruning/pruning_plan.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

namespace lm = moeprune::lm;
namespace cm = moeprune::compression;

namespace {

// d 8, 2 query heads and 1 key/value head of width 4, 4 SwiGLU experts of width 16, top-2
// dropless, 2 layers, vocabulary 20, untied head.
lm::CausalLM tiny_mixtral() {
  torch::manual_seed(3);
  return lm::CausalLM(lm::CausalLMOptions(20, 8, 2, lm::AttentionOptions(8, 2, 1, 4))
                          .moe_layers({true, true})
                          .moe(moeprune::MoELayerOptions::preset("top_k_gated", 8, 16, 4)));
}

}  // namespace

TEST_CASE("flops_per_token counts projections, attention, routers and expert rows", "[lm]") {
  auto model = tiny_mixtral();
  const auto ids = torch::randint(20, {1, 5}, torch::kLong);
  // Per layer: q 8x8, k 8x4, v 8x4, o 8x8 -> 2 * 192 = 384; scores and values over (5 + 1) / 2
  // positions on average for 2 heads of 4: 2 * 2 * 8 * 3 = 96; router 2 * 8 * 4 = 64; two expert
  // rows per token of 3 matrices 8x16: 2 * 2 * 3 * 128 = 1536. Head 2 * 20 * 8 = 320.
  const double layer = 384 + 96 + 64 + 1536;
  CHECK(cm::flops_per_token(model, ids) == Approx(2 * layer + 320).epsilon(1e-12));
  // Layer Drop of layer 1's MoE block removes its router and expert rows.
  model->drop_mlp(1);
  CHECK(cm::flops_per_token(model, ids) == Approx(2 * layer + 320 - 64 - 1536).epsilon(1e-12));
  CHECK_THROWS_WITH(cm::flops_per_token(model, torch::zeros({5}, torch::kLong)),
                    Catch::Contains("should be [B, S]"));
}

TEST_CASE("stored_parameters counts every parameter of a plain and a pruned model", "[lm]") {
  auto model = tiny_mixtral();
  // Embedding and head 2 * 20 * 8; per layer 2 norms of 8, attention 192, router 4 * 8, experts
  // 4 * 3 * 128; final norm 8.
  const int64_t per_layer = 16 + 192 + 32 + 4 * 384;
  CHECK(cm::stored_parameters(model) == 320 + 2 * per_layer + 8);
  // Two experts of layer 0 removed (router kept): 2 * 384 fewer.
  model->moe_layers()[0].second->experts()->keep_experts({1, 3});
  CHECK(cm::stored_parameters(model) == 320 + 2 * per_layer + 8 - 2 * 384);
}
