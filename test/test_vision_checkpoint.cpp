#include <moeprune/io/checkpoint.h>
#include <moeprune/models/vision/checkpoint.h>
#include <moeprune/models/vision/moe_view.h>
#include <moeprune/pruning/pruning_plan.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include "compression_helpers.h"

using Catch::Matchers::Contains;
using moeprune::VisionTransformer;

namespace {
const std::string kLegacy = MOEPRUNE_TEST_FIXTURES "/legacy_vit";
}

TEST_CASE("a checkpoint written before MoE layer states loads with its compressions") {
  // Saved at commit 3b2b44d (test/fixtures/legacy_vit/make_legacy_vit.cpp): block 1 pruned to
  // experts {0, 2, 3, 5, 7} with router rows dropped and factorised at rank 2; block 3 merged
  // into 4 groups and factorised at rank 3; recorded as options fields.
  auto vit = moeprune::load_vision_transformer(kLegacy + "/legacy_vit.pt");
  const auto one = vit->moe_layer(1)->state();
  CHECK(one.bank.held == std::vector<int64_t>{0, 2, 3, 5, 7});
  CHECK(one.router_rows_dropped);
  CHECK(one.bank.rank == 2);
  const auto three = vit->moe_layer(3)->state();
  CHECK(three.bank.groups == std::vector<std::vector<int64_t>>{{0, 1}, {2, 3, 4}, {5}, {6, 7}});
  CHECK(three.bank.rank == 3);
  // The same logits the old code computed for the same input.
  std::vector<torch::Tensor> io;
  torch::load(io, kLegacy + "/legacy_vit_io.pt");
  REQUIRE(io.size() == 2);
  vit->eval();
  torch::NoGradGuard no_grad;
  CHECK(torch::allclose(vit(io[0]).logits, io[1], 1e-5, 1e-6));
  // Saved again, it records the states the new way and reloads the same model.
  const auto path = test::scratch_dir() + "/resaved_legacy.pt";
  moeprune::save_vision_transformer(path, vit, "{\"data\": \"fashion-mnist\"}");
  CHECK(moeprune::read_vision_transformer_config(path).find("moe_layer_states") !=
        std::string::npos);
  auto again = moeprune::load_vision_transformer(path);
  again->eval();
  CHECK(torch::equal(again(io[0]).logits, vit(io[0]).logits));
}

TEST_CASE("a pruned, merged and factorised model saves and loads as it was") {
  torch::manual_seed(8);
  VisionTransformer m(test::tiny_vit(4, {1, 3}));
  m->keep_experts(1, {1, 2, 4, 6}, /*drop_router_columns=*/true);
  m->moe_layer(3)->merge_experts({{0, 1, 2}, {3, 4}, {5, 6, 7}});
  m->moe_layer(3)->experts()->factorize(2);
  const auto path = test::scratch_dir() + "/compressed_vit.pt";
  moeprune::save_vision_transformer(path, m, "{\"task\": 7}");
  auto loaded = moeprune::load_vision_transformer(path);
  CHECK(loaded->moe_layer_states() == m->moe_layer_states());
  const auto x = torch::randn({2, 1, 28, 28});
  CHECK(torch::equal(test::eval_logits(loaded, x), test::eval_logits(m, x)));
  // A clone (which rebuilds the modules) keeps the states too.
  auto copy = std::dynamic_pointer_cast<moeprune::VisionTransformerImpl>(m->clone());
  CHECK(copy->moe_layer_states() == m->moe_layer_states());
  CHECK_THROWS_WITH(moeprune::save_vision_transformer(path, m, "[1, 2]"),
                    Contains("should be a JSON object"));
  CHECK_THROWS_WITH(moeprune::vision_transformer_from_config(
                        "{\"image_size\": 28, \"channels\": 1, \"patch_size\": 4, "
                        "\"num_classes\": 4, \"d_model\": 16, \"depth\": 2, \"heads\": 2, "
                        "\"mlp_dim\": 24, \"moe_blocks\": [1], \"moe_preset\": \"vmoe\", "
                        "\"num_experts\": 8, \"k\": 2, \"capacity_factor\": 1.05, "
                        "\"batch_priority\": false, \"group_images\": 8, \"ensemble_size\": 1, "
                        "\"moe_layer_states\": {\"0\": {\"num_experts\": 8, \"held\": [0, 1]}}}"),
                    Contains("names block 0, which is not a MoE block"));
}
