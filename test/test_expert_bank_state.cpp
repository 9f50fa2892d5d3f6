#include <moeprune/layers/expert_bank_state.h>
#include <moeprune/layers/moe_layer.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

using Catch::Matchers::Contains;
using moeprune::ExpertBankState;
using moeprune::MoELayer;
using moeprune::MoELayerOptions;
using moeprune::MoELayerState;

namespace {

MoELayer layer(const std::string& preset = "vmoe") {
  torch::manual_seed(0);
  return MoELayer(MoELayerOptions::preset(preset, 8, 12, 6));
}

// The layer's weights: a pruned or merged bank and a narrowed router have fewer of them.
std::vector<std::vector<int64_t>> shapes(const MoELayer& l) {
  std::vector<std::vector<int64_t>> out;
  for (const auto& p : l->named_parameters()) {
    out.push_back(p.value().sizes().vec());
  }
  for (const auto& b : l->named_buffers()) {
    out.push_back(b.value().sizes().vec());
  }
  return out;
}

}  // namespace

TEST_CASE("a layer reports its compression state and a fresh layer rebuilds it") {
  SECTION("plain") {
    const auto s = layer()->state();
    CHECK(s.is_plain());
    CHECK(s.bank.held == std::vector<int64_t>{0, 1, 2, 3, 4, 5});
  }
  SECTION("pruned with the router kept, then factorised") {
    auto l = layer();
    l->keep_experts({1, 3, 4});
    l->experts()->factorize(2);
    const auto s = l->state();
    CHECK(s.bank.held == std::vector<int64_t>{1, 3, 4});
    CHECK_FALSE(s.router_rows_dropped);
    CHECK(s.bank.rank == 2);
    auto fresh = layer();
    fresh->restore(MoELayerState::from_json(s.to_json()));
    CHECK(fresh->state() == s);
    CHECK(shapes(fresh) == shapes(l));
  }
  SECTION("pruned with the router rows dropped (Expert Drop)") {
    auto l = layer();
    l->keep_experts({0, 2, 5}, /*drop_router_columns=*/true);
    const auto s = l->state();
    CHECK(s.router_rows_dropped);
    CHECK(l->router().num_experts() == 3);
    auto fresh = layer();
    fresh->restore(s);
    CHECK(fresh->router().num_experts() == 3);
    CHECK(shapes(fresh) == shapes(l));
  }
  SECTION("merged") {
    auto l = layer();
    l->merge_experts({{4, 0}, {1, 2, 3}, {5}});
    const auto s = l->state();
    CHECK(s.bank.held == std::vector<int64_t>{0, 1, 5});
    CHECK(s.bank.groups == std::vector<std::vector<int64_t>>{{0, 4}, {1, 2, 3}, {5}});
    auto fresh = layer();
    fresh->restore(MoELayerState::from_json(s.to_json()));
    CHECK(fresh->state() == s);
    CHECK(torch::equal(fresh->experts()->expert_map(), l->experts()->expert_map()));
  }
  SECTION("a clone keeps the state") {
    auto l = layer();
    l->keep_experts({0, 1, 2, 3}, /*drop_router_columns=*/true);
    auto copy = std::dynamic_pointer_cast<moeprune::MoELayerImpl>(l->clone());
    CHECK(copy->state() == l->state());
    const auto x = torch::randn({5, 8});
    l->eval();
    copy->eval();
    CHECK(torch::equal(copy->forward(x).output, l->forward(x).output));
  }
}

TEST_CASE("bad layer states are refused with the field named") {
  CHECK_THROWS_WITH(ExpertBankState::from_json("[1]"), Contains("expected a JSON object"));
  CHECK_THROWS_WITH(ExpertBankState::from_json("{\"held\": [0]}"), Contains("lacks 'num_experts'"));
  CHECK_THROWS_WITH(ExpertBankState::from_json("{\"num_experts\": 4, \"held\": [0, 7]}"),
                    Contains("held expert 7 is outside [0, 4)"));
  CHECK_THROWS_WITH(ExpertBankState::from_json("{\"num_experts\": 4, \"held\": \"all\"}"),
                    Contains("wrong type"));
  CHECK_THROWS_WITH(
      MoELayerState::from_json("{\"num_experts\": 4, \"held\": [0], \"router_rows_dropped\": 1}"),
      Contains("should be a boolean"));
  auto l = layer();
  MoELayerState other;
  other.bank.num_experts = 8;
  other.bank.held = {0, 1};
  CHECK_THROWS_WITH(l->restore(other), Contains("a layer of 8 experts, this layer has 6"));
  l->keep_experts({0, 1, 2});
  CHECK_THROWS_WITH(l->restore(l->state()), Contains("needs a plain layer"));
}

TEST_CASE("the router interface carries what layers and plans need") {
  SECTION("keep constraints") {
    CHECK(layer("vmoe")->router().keep_constraint().min_total() == 2);
    CHECK(layer("expert_choice")->router().keep_constraint().min_total() == 1);
    const auto e3 = layer("e3moe");
    CHECK(e3->router().keep_constraint().members == 2);
    CHECK(e3->router().keep_constraint().min_per_member == 1);
    CHECK_FALSE(e3->router().can_merge());
    CHECK_FALSE(e3->router().can_drop_columns());
    CHECK(layer("expert_choice")->router().always_drops_columns());
  }
  SECTION("an ensemble refuses merging and dropped columns by name") {
    auto e3 = layer("e3moe");
    CHECK_THROWS_WITH(e3->merge_experts({{0, 1}, {2}, {3, 4, 5}}), Contains("cannot be merged"));
    CHECK_THROWS_WITH(e3->keep_experts({0, 1, 3, 4}, true), Contains("keeps its columns"));
  }
  SECTION("capacity and group size reach the router through the layer") {
    // Factor 0.5: ceil(60 * 2 * 0.5 / 6) = 10, rounded up to 12 tokens per expert, 72 of the 120
    // slots at most; a large factor keeps all 120.
    auto l = layer("vmoe");
    l->eval();
    const auto x = torch::randn({60, 8});
    l->set_capacity_factor(0.5);
    const auto small = l->forward(x).plan;
    CHECK(small.capacity == 12);
    CHECK(small.kept().sum().item<int64_t>() <= 72);
    l->set_capacity_factor(100.0);
    const auto large = l->forward(x).plan;
    CHECK(large.kept().sum().item<int64_t>() == 120);
    l->set_group_size(30);  // two groups of 30 tokens: ceil(30 * 2 * 100 / 6) = 1000 each
    const auto grouped = l->forward(x).plan;
    CHECK(grouped.group_size == 30);
    CHECK(grouped.capacity == 1000);
    CHECK_THROWS_WITH(l->set_group_size(-1), Contains("group_size should be >= 0"));
  }
}
