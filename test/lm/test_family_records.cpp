// The family registry: every supported model_type is listed once and loads its fixture
// (computing what transformers computed); and a family defined outside the library, in this one
// file, is registered, saved, loaded back and pruned on disk like a built-in one.
#include "lm_test_helpers.h"

#include <moeprune/hf/checkpoint.h>
#include <moeprune/hf/pruning.h>
#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/moe_view.h>
#include <moeprune/models/seq2seq/checkpoint.h>
#include <moeprune/pruning/pruning_plan.h>

// The record interface: a test-only family derives from it as a family file in the library would.
#include "models/lm/families/mlp_experts.h"

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

using namespace lm_test;

namespace {

// The test-only family below.
const std::string kToy = "toy_moe";

// A made-up family: Qwen3-MoE's expert layout (mlp.experts.{j}.gate_proj/up_proj/down_proj,
// router mlp.gate) with every other layer MoE (odd layers dense) under a key of its own, one
// attention_bias for q, k, v and o, no shared expert.
class ToyMoe : public moeprune::lm::MlpExpertsFamily {
 public:
  std::string model_type() const override { return kToy; }
  std::string architecture() const override { return "ToyMoeForCausalLM"; }
  std::string summary() const override { return "ToyMoeForCausalLM; even layers MoE (test only)"; }
  std::string experts_key() const override { return "toy_experts"; }
  std::string width_key() const override { return "moe_intermediate_size"; }
  void read_model(const moeprune::hf::Config& config,
                  moeprune::lm::CausalLMOptions& o) const override {
    o.intermediate_size(config.integer("intermediate_size"));
  }
  void write_dense_width(const moeprune::lm::CausalLMOptions& o,
                         nlohmann::ordered_json& c) const override {
    c["intermediate_size"] = o.intermediate_size();
  }
  void write_moe_layers(const moeprune::lm::CausalLMOptions& o,
                        nlohmann::ordered_json& /*c*/) const override {
    for (size_t i = 0; i < o.moe_layers().size(); ++i) {
      TORCH_CHECK(o.moe_layers()[i] == (i % 2 == 0),
                  "save: toy_moe's MoE layers are the even ones");
    }
  }

 protected:
  bool is_moe_layer(const moeprune::hf::Config& /*config*/, int64_t i) const override {
    return i % 2 == 0;
  }
};

// Registers the toy family once per process.
void register_toy() {
  static const bool done = [] {
    moeprune::lm::add_family(std::make_unique<ToyMoe>());
    return true;
  }();
  (void)done;
}

moeprune::lm::CausalLM toy_model() {
  torch::manual_seed(7);
  auto moe = moeprune::MoELayerOptions::preset("top_k_gated", 32, 24, 6);
  moe.routing().k(2).renormalize(false);
  moeprune::lm::AttentionOptions attention(32, 4, 2, 8);
  attention.qkv_bias(true).output_bias(true);
  auto o = moeprune::lm::CausalLMOptions(50, 32, 4, attention)
               .model_type(kToy)
               .intermediate_size(40)
               .moe_layers({true, false, true, false})
               .moe(moe);
  moeprune::lm::CausalLM model(o);
  model->eval();
  return model;
}

}  // namespace

TEST_CASE("the family registry lists every supported model_type once, and each loads its fixture",
          "[lm][families]") {
  // The families this release supports, written out here rather than taken from the code.
  const std::set<std::string> want{"mixtral",     "qwen2_moe", "qwen3_moe",
                                   "olmoe",       "deepseek",  "deepseek_v2",
                                   "deepseek_v3", "glm4_moe",  "switch_transformers"};
  std::vector<std::string> listed;
  for (const auto& family : moeprune::hf::supported_families()) {
    CHECK_FALSE(family.summary.empty());
    if (family.model_type != kToy) {  // registered by the test below when it ran first
      listed.push_back(family.model_type);
    }
  }
  std::set<std::string> unique(listed.begin(), listed.end());
  CHECK(unique.size() == listed.size());
  CHECK(unique == want);
  for (const auto& type : want) {
    SECTION(type) {
      if (type == "switch_transformers") {
        const auto dir = std::string(MOEPRUNE_TEST_FIXTURES) + "/seq2seq/switch_transformers";
        const auto ref = moeprune::safetensors::load_file(dir + "_reference.safetensors");
        auto model = moeprune::seq2seq::load_switch_transformer(dir);
        model->eval();
        torch::NoGradGuard no_grad;
        const auto out = model->forward(ref.at("input_ids"), ref.at("attention_mask"),
                                        ref.at("decoder_input_ids"));
        CHECK(max_diff(out.logits, ref.at("logits")) < 1e-4);
      } else {
        auto model = moeprune::lm::load_causal_lm(kFixtures + "/" + type);
        CHECK(model->options.model_type() == type);
        CHECK(max_diff(logits_of(model, input_ids(type)),
                       moeprune::safetensors::load_file(kFixtures + "/" + type +
                                                        "_reference.safetensors")
                           .at("logits")) < 1e-5);
      }
    }
  }
}

TEST_CASE("a family defined in one file outside the library loads, saves and prunes",
          "[lm][families]") {
  register_toy();
  CHECK_THROWS_WITH(moeprune::lm::add_family(std::make_unique<ToyMoe>()),
                    Catch::Contains("model_type \"toy_moe\" is already registered"));
  CHECK_THROWS_WITH(moeprune::lm::add_family(nullptr), Catch::Contains("add_family: no record"));
  auto model = toy_model();
  const auto ids = torch::randint(50, {2, 7}, torch::kLong);
  const auto want = logits_of(model, ids);
  const auto dir = test::scratch_dir() + "/toy_saved";
  moeprune::lm::save_causal_lm(model, dir);

  // The record wrote config.json in its own terms.
  const auto config = read_json(dir + "/config.json");
  CHECK(config.at("model_type") == kToy);
  CHECK(config.at("architectures") == nlohmann::json::array({"ToyMoeForCausalLM"}));
  CHECK(config.at("toy_experts") == 6);
  CHECK_FALSE(config.contains("num_experts"));
  CHECK(config.at("attention_bias") == true);
  CHECK(config.at("intermediate_size") == 40);

  // The checkpoint half finds the even layers' MoE blocks under the record's names.
  const moeprune::safetensors::Checkpoint checkpoint(dir);
  const auto info = moeprune::hf::describe(dir, checkpoint);
  REQUIRE(info.layers.size() == 2);
  CHECK(info.layers[0].prefix == "model.layers.0.mlp");
  CHECK(info.layers[1].prefix == "model.layers.2.mlp");
  CHECK(checkpoint.contains("model.layers.2.mlp.experts.5.up_proj.weight"));
  CHECK(checkpoint.contains("model.layers.1.mlp.gate_proj.weight"));  // a dense layer

  // Loaded back, it computes what the model that was saved computes.
  auto loaded = moeprune::lm::load_causal_lm(dir);
  CHECK(loaded->options.model_type() == kToy);
  CHECK(max_diff(logits_of(loaded, ids), want) < 1e-6);

  // Pruned on disk (router rows cut), it equals the in-memory model pruned alike.
  moeprune::pruning::PruningPlan on_disk, in_memory;
  const std::vector<std::vector<int64_t>> gone{{1, 4}, {0, 5}};
  for (size_t i = 0; i < 2; ++i) {
    on_disk.layers.push_back({info.layers[i].index, 6, gone[i], {}});
    in_memory.layers.push_back({info.layers[i].decoder_layer, 6, gone[i], {}});
  }
  const auto pruned_dir = test::scratch_dir() + "/toy_pruned";
  moeprune::hf::write_pruned_checkpoint(moeprune::hf::Source(dir), on_disk, pruned_dir);
  const auto pruned_config = read_json(pruned_dir + "/config.json");
  CHECK(pruned_config.at("toy_experts") == 4);
  CHECK(pruned_config.at("norm_topk_prob") == true);  // the record's rule for a cut router
  moeprune::pruning::apply_plan(*moeprune::lm::moe_view(model), in_memory, /*cut=*/true);
  auto pruned = moeprune::lm::load_causal_lm(pruned_dir);
  CHECK(pruned->layer(2)->moe_block->moe->experts()->num_held() == 4);
  CHECK(max_diff(logits_of(pruned, ids), logits_of(model, ids)) < 1e-6);

  // An unknown model_type is refused naming the families, the registered one among them.
  CHECK_THROWS_WITH(
      moeprune::lm::load_causal_lm(
          edited_copy("mixtral", "toy_unknown", [](auto& c) { c["model_type"] = "nope_moe"; })),
      Catch::Contains("model_type \"nope_moe\" is not supported") && Catch::Contains("toy_moe"));
}
