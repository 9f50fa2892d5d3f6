// What distributed::shard_experts and the expert-parallel layer refuse, on a group of one
// process (the multi-process behaviour is in ep_worker.cpp).
#include "free_port.h"

#include "../scratch_dir.h"

#include <moeprune/distributed/expert_parallel.h>
#include <moeprune/models/seq2seq/checkpoint.h>
#include <moeprune/models/vision/moe_view.h>
#include <moeprune/models/vision/vision_transformer.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

namespace dist = moeprune::distributed;
using moeprune::MoELayer;
using moeprune::MoELayerOptions;

namespace {

dist::ProcessGroup group_of_one() {
  dist::Environment env;
  env.master_port = test::free_port();
  return dist::ProcessGroup(env, dist::ProcessGroupOptions().timeout(std::chrono::seconds(10)));
}

}  // namespace

TEST_CASE("expert placements and sharding refuse what they cannot serve", "[distributed]") {
  CHECK_THROWS_WITH(dist::ExpertPlacement::even(3, 4),
                    Catch::Contains("3 experts cannot give each of 4 ranks one"));
  const auto even = dist::ExpertPlacement::even(7, 3);  // 3, 2, 2
  CHECK(even.rank_of == std::vector<int64_t>{0, 0, 0, 1, 1, 2, 2});
  CHECK(even.experts_of(1) == std::vector<int64_t>{3, 4});

  const auto group = group_of_one();
  MoELayer layer(MoELayerOptions::preset("top_k_gated", 8, 16, 4));
  dist::ExpertPlacement wrong_size;
  wrong_size.rank_of = {0, 0, 0};
  CHECK_THROWS_WITH(dist::shard_experts(layer, group, wrong_size),
                    Catch::Contains("the placement names 3 experts, the layer holds 4"));
  dist::ExpertPlacement wrong_rank;
  wrong_rank.rank_of = {0, 0, 0, 1};
  CHECK_THROWS_WITH(dist::shard_experts(layer, group, wrong_rank),
                    Catch::Contains("the placement names rank 1, outside [0, 1)"));

  MoELayer merged(MoELayerOptions::preset("top_k_gated", 8, 16, 4));
  merged->merge_experts({{0, 1}, {2, 3}});
  CHECK_THROWS_WITH(dist::shard_experts(merged, group),
                    Catch::Contains("merged banks cannot be spread yet"));

  MoELayer sync_free(
      MoELayerOptions::preset("top_k_gated", 8, 16, 4).sync_free(true).check_finite(false));
  CHECK_THROWS_WITH(dist::shard_experts(sync_free, group),
                    Catch::Contains("a sync_free layer cannot exchange rows"));

  dist::shard_experts(layer, group);
  CHECK(dist::last_exchange_bytes(layer) == 0);
  CHECK_THROWS_WITH(dist::shard_experts(layer, group),
                    Catch::Contains("the layer's experts are already spread"));
  CHECK_THROWS_WITH(layer->keep_experts({0, 1}),
                    Catch::Contains("the experts are spread over processes; prune before"));
  CHECK_THROWS_WITH(layer->merge_experts({{0, 1}, {2, 3}}),
                    Catch::Contains("the experts are spread over processes; merge before"));
  // A group of one serves every expert itself, as the plain layer does.
  MoELayer plain(MoELayerOptions::preset("top_k_gated", 8, 16, 4));
  {
    torch::NoGradGuard no_grad;
    const auto from = layer->named_parameters();
    for (auto& p : plain->named_parameters()) {
      p.value().copy_(from[p.key()]);
    }
  }
  const auto x = torch::randn({2, 5, 8});
  CHECK(torch::equal(layer->forward(x).output, plain->forward(x).output));
  CHECK_THROWS_WITH(layer->restore(plain->state()),
                    Catch::Contains("the experts are spread over processes; restore before"));
  CHECK_THROWS_WITH(dist::unshard_experts(plain),
                    Catch::Contains("the layer's experts are not spread over processes"));
  dist::unshard_experts(layer);
  CHECK_FALSE(layer->expert_exchange());
  CHECK(torch::equal(layer->forward(x).output, plain->forward(x).output));
}

TEST_CASE("a spread layer reports the whole layer's state", "[distributed]") {
  // On a group of one every expert stays here; a pruned layer shows what a spread layer's state
  // is made of: the held experts of every process (here the one), not this process's bank.
  const auto group = group_of_one();
  MoELayer layer(MoELayerOptions::preset("top_k_gated", 8, 16, 6));
  layer->keep_experts({0, 2, 3, 5});
  const auto before = layer->state();
  dist::shard_experts(layer, group);
  CHECK(layer->state() == before);
  CHECK(layer->state().bank.held == std::vector<int64_t>{0, 2, 3, 5});
  // A clone keeps this process's share and the exchange.
  auto copy = std::dynamic_pointer_cast<moeprune::MoELayerImpl>(layer->clone());
  CHECK(copy->experts()->expert_ids() == std::vector<int64_t>{0, 2, 3, 5});
  CHECK(copy->expert_exchange() == layer->expert_exchange());
}

TEST_CASE("writers and gathers refuse what a spread model cannot give them", "[distributed]") {
  const auto group = group_of_one();
  // Switch: the writer names the spread layer (vision and Mixtral/Qwen: ep_worker checkpoint).
  auto switch_model = moeprune::seq2seq::load_switch_transformer(MOEPRUNE_TEST_FIXTURES
                                                                 "/seq2seq/switch_transformers");
  for (auto& [name, layer] : switch_model->moe_layers()) {
    dist::shard_experts(layer, group);
  }
  const auto out = test::scratch_dir() + "/spread_switch";
  CHECK_THROWS_WITH(
      moeprune::seq2seq::save_switch_transformer(switch_model, out),
      Catch::Contains("save_switch_transformer: MoE layer encoder.block.1.layer.1.mlp "
                      "holds only this process's share of its experts"));
  CHECK_FALSE(test::path_exists(out));
  // Experts travel packed in one dtype.
  MoELayer layer(MoELayerOptions::preset("vmoe", 8, 16, 4));
  dist::shard_experts(layer, group);
  layer->experts()->b1.set_data(layer->experts()->b1.to(torch::kDouble));
  CHECK_THROWS_WITH(dist::unshard_experts(layer),
                    Catch::Contains("expert parameter 'b1' is double, w1 float; gathering needs "
                                    "one dtype"));
}

TEST_CASE("write_on_root refuses a root outside the group", "[distributed]") {
  const auto group = group_of_one();
  torch::manual_seed(0);
  moeprune::VisionTransformer model(moeprune::VisionTransformerOptions::small_vmoe(10));
  const auto view = moeprune::moe_view(model);
  bool wrote = false;
  CHECK_THROWS_WITH(dist::write_on_root(
                        *view, group, [&] { wrote = true; }, 1),
                    Catch::Contains("root 1 is outside [0, 1)"));
  CHECK_FALSE(wrote);
}

TEST_CASE("the expert bank's device-side forward refuses malformed offsets", "[sync_free]") {
  moeprune::ExpertBank bank(moeprune::ExpertBankOptions(3, 4, 8));
  const auto rows = torch::randn({5, 4});
  CHECK_THROWS_WITH(bank->forward_offsets(rows, torch::tensor({0, 2, 5}, torch::kLong)),
                    Catch::Contains("offsets should be int64 [4] (one more than the 3 held "
                                    "experts), got Long [3]"));
  CHECK_THROWS_WITH(bank->forward_offsets(rows, torch::tensor({0, 2, 3, 5}, torch::kInt)),
                    Catch::Contains("offsets should be int64 [4]"));
  // d 4 in fp32 is one 16-byte vector, F 8 two: the grouped path; an end past the rows is
  // caught by the loop path's check (d 3 below).
  moeprune::ExpertBank odd(moeprune::ExpertBankOptions(3, 3, 8));
  CHECK_THROWS_WITH(
      odd->forward_offsets(torch::randn({5, 3}), torch::tensor({0, 2, 3, 6}, torch::kLong)),
      Catch::Contains("offsets should run from 0 to at most the 5 rows, got 0 to 6"));
}
