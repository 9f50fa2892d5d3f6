// Pruning plans written by hand (issue 20): every wrong type, missing field and bad shape is
// refused with the field's path named; a well-formed hand-written plan reads as written.
#include <moeprune/pruning/pruning_plan.h>

#include <catch2/catch.hpp>

#include <string>

using Catch::Matchers::Contains;
using moeprune::pruning::PruningPlan;

TEST_CASE("a hand-written pruning plan reads as written") {
  const auto plan = PruningPlan::from_json(R"({
    "criterion": "frequency", "model_signature": null,
    "layers": [{"key": 1, "num_experts": 4, "pruned": [0, 3], "scores": [0.5, 1, 2, -1e-3]},
               {"block": 3, "num_experts": 4, "pruned": []}]})");
  CHECK(plan.criterion == "frequency");
  CHECK(plan.model_signature.empty());
  REQUIRE(plan.layers.size() == 2);
  CHECK(plan.layers[0].key == 1);
  CHECK(plan.layers[0].pruned == std::vector<int64_t>{0, 3});
  CHECK(plan.layers[0].scores == std::vector<double>{0.5, 1.0, 2.0, -1e-3});
  CHECK(plan.layers[1].key == 3);  // the old "block" name of the key
  CHECK(plan.layers[1].scores.empty());
}

TEST_CASE("hand-written pruning plans with wrong types or fields are refused by field") {
  const std::string head = R"({"model_signature": null, "layers": [)";
  const struct {
    std::string json, field, problem;
  } cases[] = {
      {"[1, 2]", "the plan", "should be an object"},
      {R"({"layers": []})", "the plan", "has no \"model_signature\""},
      {R"({"model_signature": 3, "layers": []})", "model_signature", "object or null"},
      {R"({"model_signature": null})", "the plan", "has no \"layers\""},
      {R"({"model_signature": null, "layers": {}})", "layers", "should be an array"},
      {R"({"criterion": 7, "model_signature": null, "layers": []})", "criterion",
       "should be a string"},
      {head + "5]}", "layers[0]", "should be an object"},
      {head + R"({"num_experts": 4, "pruned": [1]}]})", "layers[0]", "has no \"key\""},
      {head + R"({"key": "2", "num_experts": 4, "pruned": [1]}]})", "layers[0].key",
       "should be an integer, got string"},
      {head + R"({"key": 2, "num_experts": 4.5, "pruned": [1]}]})", "layers[0].num_experts",
       "should be an integer, got number"},
      {head + R"({"key": 2, "num_experts": 4, "pruned": 1}]})", "layers[0].pruned",
       "should be an array"},
      {head + R"({"key": 2, "num_experts": 4, "pruned": [1]}, {"key": 3, "num_experts": 4,
                 "pruned": [0, 1.5]}]})",
       "layers[1].pruned[1]", "should be an integer, got number"},
      {head + R"({"key": 2, "num_experts": 4, "pruned": [1], "scores": [1, "x"]}]})",
       "layers[0].scores[1]", "should be a number, got string"},
      {R"({"layers": [)", "pruning plan JSON", "parse error"},
  };
  for (const auto& c : cases) {
    INFO(c.json);
    CHECK_THROWS_WITH(PruningPlan::from_json(c.json),
                      Contains("pruning plan JSON") && Contains(c.field) && Contains(c.problem));
  }
}
