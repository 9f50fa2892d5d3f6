#include <moeprune/hf/checkpoint.h>
#include <moeprune/hf/pruning.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "scratch_dir.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>

namespace hf = moeprune::hf;
namespace st = moeprune::safetensors;
using Catch::Matchers::Contains;

namespace {

const std::string kFixtures = MOEPRUNE_TEST_FIXTURES "/hf";

std::string scratch() {
  return test::scratch_dir("moeprune-hf");
}
bool exists(const std::string& path) {
  return test::path_exists(path);
}

// Runs every MoE layer of `dir` on the reference inputs and compares with transformers' outputs.
// fp32 throughout; the tolerance covers summation-order differences only.
void check_parity(const std::string& dir, const std::string& reference, int64_t layers) {
  auto model = hf::load_moe_model(dir);
  REQUIRE(static_cast<int64_t>(model.layers.size()) == layers);
  st::File ref(reference);
  torch::NoGradGuard no_grad;
  for (auto& [index, layer] : model.layers) {
    const auto& prefix = model.info.layers[static_cast<size_t>(index)].prefix;
    INFO(prefix);
    layer->eval();
    const auto x = ref.tensor(prefix + ".input");
    const auto want = ref.tensor(prefix + ".output");
    const auto got = layer->forward(x).output;
    REQUIRE(got.sizes() == want.sizes());
    INFO("max |diff| " << (got - want).abs().max().item<double>());
    // transformers computed the reference in fp32 from the same weights; the two differ only in
    // summation order: a few fp32 ulps of values of order 1.
    CHECK(torch::allclose(got, want, /*rtol=*/1e-5, /*atol=*/1e-6));
  }
}

std::vector<int64_t> kept_of(const std::vector<int64_t>& pruned, int64_t E) {
  std::vector<int64_t> kept;
  for (int64_t j = 0; j < E; ++j) {
    if (std::find(pruned.begin(), pruned.end(), j) == pruned.end()) {
      kept.push_back(j);
    }
  }
  return kept;
}

}  // namespace

TEST_CASE("Mixtral layers reproduce transformers 4.x MixtralSparseMoeBlock (per-expert layout)") {
  check_parity(kFixtures + "/mixtral_ft", kFixtures + "/mixtral_ft_reference.safetensors", 2);
  check_parity(kFixtures + "/mixtral_ft_sharded", kFixtures + "/mixtral_ft_reference.safetensors",
               2);
}

TEST_CASE("Mixtral layers reproduce transformers 5.x's fused gate_up_proj/down_proj checkpoint") {
  st::Checkpoint fused(kFixtures + "/mixtral_ft_fused");
  REQUIRE(fused.contains("model.layers.0.mlp.experts.gate_up_proj"));
  check_parity(kFixtures + "/mixtral_ft_fused",
               kFixtures + "/mixtral_ft_fused_reference.safetensors", 2);
}

TEST_CASE("Switch layers reproduce transformers 4.x SwitchTransformersSparseMLP with drops") {
  check_parity(kFixtures + "/switch_ft", kFixtures + "/switch_ft_reference.safetensors", 2);
  // The reference must exercise the capacity: some tokens were dropped (zero output).
  st::File ref(kFixtures + "/switch_ft_reference.safetensors");
  const auto out = ref.tensor("encoder.block.1.layer.1.mlp.output");
  const auto dropped = out.abs().sum(-1).eq(0).sum().item<int64_t>();
  REQUIRE(dropped > 0);
}

TEST_CASE("describe refuses a config and tensors that disagree, and missing experts") {
  const auto dir = scratch() + "/bad_config";
  REQUIRE(std::system(("cp -r " + kFixtures + "/mixtral_ft " + dir).c_str()) == 0);
  std::string config;
  {
    std::ifstream in(dir + "/config.json");
    config.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  const auto at = config.find("\"intermediate_size\": 24");
  REQUIRE(at != std::string::npos);
  std::ofstream(dir + "/config.json")
      << config.substr(0, at) + "\"intermediate_size\": 32" + config.substr(at + 23);
  st::Checkpoint checkpoint(dir);
  REQUIRE_THROWS_WITH(hf::describe(dir, checkpoint),
                      Contains("model.layers.0.block_sparse_moe.experts.0.w1.weight") &&
                          Contains("[24, 16]") && Contains("[32, 16]"));

  // A checkpoint without expert 3's w2.
  const auto missing = scratch() + "/missing_expert";
  REQUIRE(std::system(
              ("mkdir " + missing + " && cp " + kFixtures + "/mixtral_ft/config.json " + missing)
                  .c_str()) == 0);
  st::Checkpoint full(kFixtures + "/mixtral_ft");
  st::Writer w(missing + "/model.safetensors");
  for (const auto& name : full.names()) {
    if (name != "model.layers.1.block_sparse_moe.experts.3.w2.weight") {
      w.add(name, full.tensor(name));
    }
  }
  w.finish();
  st::Checkpoint partial(missing);
  REQUIRE_THROWS_WITH(
      hf::describe(missing, partial),
      Contains("model.layers.1.block_sparse_moe.experts.3.w2.weight") && Contains("missing"));
}

TEST_CASE("a bf16 layer keeps the router's correction bias in fp32, as transformers does") {
  // transformers registers e_score_correction_bias as an fp32 buffer and keeps it there in a bf16
  // model; rounded to bf16 it moves the choice scores by up to 2^-9 of itself, more than some
  // tokens' margins (lm_bf16_layers found a GLM-4.5 token routed to another group).
  for (const std::string fixture : {"deepseek_v3", "glm4_moe"}) {
    INFO(fixture);
    const auto dir = kFixtures + "/" + fixture;
    st::Checkpoint checkpoint(dir);
    const auto info = hf::describe(dir, checkpoint);
    const auto& ref = info.layers.front();
    REQUIRE_FALSE(ref.router_bias.empty());
    const auto layer =
        hf::load_moe_layer(checkpoint, info, ref, hf::LoadOptions().dtype(torch::kBFloat16));
    const auto bias = layer->router().router_bias();
    CHECK(bias.scalar_type() == torch::kFloat);
    CHECK(torch::equal(bias, checkpoint.tensor(ref.router_bias).to(torch::kFloat)));
    CHECK_FALSE(
        torch::equal(bias, bias.to(torch::kBFloat16).to(torch::kFloat)));  // not bf16 values
    CHECK(layer->router().router_weight().scalar_type() == torch::kBFloat16);
  }
}

TEST_CASE("describe names config.json and its keys for a top-k the experts cannot meet") {
  // The router modules would say only "k should be in [1, E = 6]"; describe names the file and
  // keys: the expert count's key differs per family, and group-limited routers add their groups.
  const auto with_config = [](const std::string& fixture, const std::string& name,
                              const std::function<void(nlohmann::json&)>& change) {
    const auto dir = scratch() + "/" + name;
    REQUIRE(std::system(("cp -r " + kFixtures + "/" + fixture + " " + dir).c_str()) == 0);
    auto config = nlohmann::json::parse(std::ifstream(dir + "/config.json"));
    change(config);
    std::ofstream(dir + "/config.json") << config.dump(1);
    return dir;
  };
  const auto check = [](const std::string& dir, const std::string& message) {
    st::Checkpoint checkpoint(dir);
    REQUIRE_THROWS_WITH(hf::describe(dir, checkpoint),
                        Contains(dir + "/config.json: ") && Contains(message));
  };
  check(with_config("mixtral_ft", "k_too_large", [](auto& c) { c["num_experts_per_tok"] = 7; }),
        "num_experts_per_tok = 7 should be in [1, num_local_experts = 6]");
  check(with_config("mixtral_ft", "k_zero", [](auto& c) { c["num_experts_per_tok"] = 0; }),
        "num_experts_per_tok = 0 should be in [1, num_local_experts = 6]");
  // DeepSeek-V3 fixture: 8 experts in n_group = 4 groups of 2, topk_group = 2: at most 4.
  check(with_config("deepseek_v3", "k_groups", [](auto& c) { c["num_experts_per_tok"] = 5; }),
        "num_experts_per_tok = 5 experts do not fit in topk_group = 2 groups of 2 "
        "(n_routed_experts = 8 in n_group = 4 groups)");
}

TEST_CASE("router_norm_change scores a checkpoint pair as ||W_ft[s]|| - ||W_pre[s]||") {
  const auto registry = moeprune::pruning::CriterionRegistry::with_builtins();
  const hf::Source finetuned(kFixtures + "/mixtral_ft"), pretrained(kFixtures + "/mixtral_pre");
  hf::ScoringOptions o;
  o.pretrained = &pretrained;
  const auto scores = hf::score_checkpoint(finetuned, *registry.create("router_norm_change"), o);
  REQUIRE(scores.size() == 2);
  st::Checkpoint pre(pretrained.directory()), ft(finetuned.directory());
  for (int64_t i = 0; i < 2; ++i) {
    const auto name = "model.layers." + std::to_string(i) + ".block_sparse_moe.gate.weight";
    // By hand: row norms of the two router weights.
    const auto a = ft.tensor(name).to(torch::kDouble), b = pre.tensor(name).to(torch::kDouble);
    const auto want = a.pow(2).sum(1).sqrt() - b.pow(2).sum(1).sqrt();
    REQUIRE(torch::allclose(scores.at(i), want, 1e-9, 1e-12));
  }
  SECTION("data-driven criteria ask for calibration hidden states") {
    REQUIRE_THROWS_WITH(hf::score_checkpoint(finetuned, *registry.create("frequency"), o),
                        Contains("needs calibration data") && Contains("--moe-inputs"));
  }
}

TEST_CASE("pruned Mixtral checkpoints: router rows cut or kept, tensors streamed unchanged") {
  const auto source = GENERATE(std::string("mixtral_ft"), std::string("mixtral_ft_fused"),
                               std::string("mixtral_ft_sharded"));
  const auto keep = GENERATE(false, true);
  INFO(source << (keep ? " keep" : " cut"));
  const auto src = kFixtures + "/" + source;
  st::Checkpoint in(src);
  const auto info = hf::describe(src, in);
  moeprune::pruning::PruningPlan plan;
  plan.criterion = "hand";
  plan.layers.push_back({0, 6, {1, 4}, {}});
  plan.layers.push_back({1, 6, {0, 5}, {}});
  const auto out = scratch() + "/" + source + (keep ? "_keep" : "_cut");
  hf::WriteOptions wo;
  wo.router = keep ? hf::RouterRows::kKeep : hf::RouterRows::kCut;
  const auto report = hf::write_pruned_checkpoint(hf::Source(src), plan, out, wo);
  REQUIRE(report.bytes_written > 0);
  REQUIRE(exists(out + "/generation_config.json"));
  REQUIRE(exists(out + "/pruning_plan.json"));

  // Our pruned layers: the source loaded and pruned in memory.
  auto original = hf::load_moe_model(src);
  auto pruned = hf::load_moe_model(out);
  REQUIRE(pruned.info.num_experts == (keep ? 6 : 4));
  st::Checkpoint written(out);
  torch::manual_seed(3);
  const auto x = torch::randn({2, 9, 16});
  torch::NoGradGuard no_grad;
  for (const auto& lp : plan.layers) {
    const auto& ref = info.layers[static_cast<size_t>(lp.key)];
    INFO(ref.prefix);
    // Untouched: the router rows of kept experts are the source's bytes.
    const auto router = written.tensor(ref.router);
    const auto kept = kept_of(lp.pruned, 6);
    const auto src_router = in.tensor(ref.router);
    if (keep) {
      REQUIRE(torch::equal(router, src_router));
    } else {
      REQUIRE(torch::equal(router, src_router.index_select(0, torch::tensor(kept))));
    }
    auto layer = original.layers.at(lp.key);
    layer->keep_experts(kept, /*drop_router_columns=*/!keep);
    layer->eval();
    auto loaded = pruned.layers.at(lp.key);
    loaded->eval();
    REQUIRE(loaded->experts()->num_held() == 4);
    REQUIRE(torch::allclose(loaded->forward(x).output, layer->forward(x).output, 1e-5, 1e-6));
  }
  // Tensors outside the MoE layers are byte-for-byte copies.
  for (const auto& name : in.names()) {
    if (name.find("self_attn") != std::string::npos || name.find("embed") != std::string::npos) {
      const auto& a = in.file(in.shard_of(name));
      const auto& b = written.file(written.shard_of(name));
      REQUIRE(a.info(name).nbytes() == b.info(name).nbytes());
      REQUIRE(std::memcmp(a.bytes(name), b.bytes(name), a.info(name).nbytes()) == 0);
    }
  }
}

TEST_CASE("pruning a checkpoint refuses bad requests and leaves no partial output") {
  const auto src = kFixtures + "/switch_ft";
  moeprune::pruning::PruningPlan plan;
  plan.layers.push_back({0, 6, {1, 2}, {}});
  plan.layers.push_back({1, 6, {3}, {}});
  const auto out = scratch() + "/switch_refused";
  SECTION("a different count per layer cannot be cut") {
    REQUIRE_THROWS_WITH(hf::write_pruned_checkpoint(hf::Source(src), plan, out),
                        Contains("same number of experts") && Contains("--router keep"));
    REQUIRE_FALSE(exists(out));
    REQUIRE(std::system(("ls -A " + scratch() + " | grep -q switch_refused").c_str()) != 0);
  }
  SECTION("an existing output folder is never touched") {
    REQUIRE(std::system(("mkdir " + out + " && touch " + out + "/mine").c_str()) == 0);
    plan.layers[1].pruned = {3, 4};
    REQUIRE_THROWS_WITH(hf::write_pruned_checkpoint(hf::Source(src), plan, out),
                        Contains("already exists"));
    REQUIRE(exists(out + "/mine"));
  }
  SECTION("a plan for more experts than the model has") {
    plan.layers[1].pruned = {3, 9};
    REQUIRE_THROWS_WITH(hf::write_pruned_checkpoint(hf::Source(src), plan, out + "2"),
                        Contains("expert 9") && Contains("decoder.block.1.layer.2.mlp"));
    REQUIRE_FALSE(exists(out + "2"));
  }
}

TEST_CASE("a cut Switch checkpoint drops the experts' tensors and renumbers the rest") {
  const auto src = kFixtures + "/switch_ft";
  moeprune::pruning::PruningPlan plan;
  plan.layers.push_back({0, 6, {0, 2}, {}});
  plan.layers.push_back({1, 6, {2, 5}, {}});
  const auto out = scratch() + "/switch_cut";
  const auto report = hf::write_pruned_checkpoint(hf::Source(src), plan, out);
  REQUIRE(report.tensors_dropped == 8);  // 2 experts x (wi, wo) x 2 layers
  st::Checkpoint in(src), written(out);
  const std::string p = "decoder.block.1.layer.2.mlp.experts.expert_";
  // Decoder layer keeps 0, 1, 3, 4 -> renumbered 0, 1, 2, 3.
  REQUIRE(torch::equal(written.tensor(p + "2.wi.weight"), in.tensor(p + "3.wi.weight")));
  REQUIRE(torch::equal(written.tensor(p + "3.wo.weight"), in.tensor(p + "4.wo.weight")));
  REQUIRE_FALSE(written.contains(p + "4.wi.weight"));
  const auto model = hf::load_moe_model(out);
  REQUIRE(model.info.num_experts == 4);
}

TEST_CASE("checkpoint scoring refuses an unknown model and calibration data that does not fit") {
  const auto registry = moeprune::pruning::CriterionRegistry::with_builtins();
  const auto llama = scratch() + "/llama";
  REQUIRE(std::system(("cp -r " + kFixtures + "/mixtral_ft " + llama +
                       " && sed -i 's/\"model_type\": \"mixtral\"/\"model_type\": \"llama\"/' " +
                       llama + "/config.json")
                          .c_str()) == 0);
  st::Checkpoint checkpoint(llama);
  REQUIRE_THROWS_WITH(hf::describe(llama, checkpoint),
                      Contains("model_type \"llama\" is not supported"));

  const hf::Source finetuned(kFixtures + "/mixtral_ft");
  const auto frequency = registry.create("frequency");
  const auto wrong_width = scratch() + "/calibration_wrong_width.safetensors";
  st::save_file(wrong_width, {{"model.layers.0.block_sparse_moe", torch::randn({5, 8})},
                              {"model.layers.1.block_sparse_moe", torch::randn({5, 8})}});
  const hf::HiddenStateFile wrong_width_inputs(wrong_width);
  hf::ScoringOptions o;
  o.inputs = &wrong_width_inputs;
  REQUIRE_THROWS_WITH(hf::score_checkpoint(finetuned, *frequency, o),
                      Contains("last dimension 8") && Contains("hidden size is 16"));
  const auto one_layer = scratch() + "/calibration_one_layer.safetensors";
  st::save_file(one_layer, {{"model.layers.0.block_sparse_moe", torch::randn({5, 16})}});
  const hf::HiddenStateFile one_layer_inputs(one_layer);
  o.inputs = &one_layer_inputs;
  REQUIRE_THROWS_WITH(hf::score_checkpoint(finetuned, *frequency, o),
                      Contains("no hidden states for MoE layer 'model.layers.1.block_sparse_moe'"));
}

TEST_CASE("DeepSeek-V2/V3 and GLM-4.5 MoE layers reproduce transformers' routed experts") {
  // Tiny transformers 4.57.6 models (scripts/make_hf_fixtures.py v4_grouped): V3 and GLM with
  // sigmoid scores, a non-zero correction bias and several groups; V2 group_limited_greedy.
  for (const std::string name : {"deepseek_v3", "deepseek_v2", "glm4_moe"}) {
    INFO(name);
    check_parity(kFixtures + "/" + name, kFixtures + "/" + name + "_reference.safetensors", 1);
    const auto model = hf::load_moe_model(kFixtures + "/" + name);
    REQUIRE(model.info.group_routing.has_value());
    CHECK(model.info.layers.front().prefix == "model.layers.1.mlp");  // layer 0 is dense
  }
}

TEST_CASE("a group-limited checkpoint is pruned by whole groups, its bias cut with the rows") {
  // GLM-4.5 fixture: 8 experts in n_group = 2 groups of 4, topk_group 1, k 2.
  const auto src = kFixtures + "/glm4_moe";
  st::Checkpoint in(src);
  const auto info = hf::describe(src, in);
  const auto& ref = info.layers.front();
  REQUIRE(ref.router_bias == "model.layers.1.mlp.gate.e_score_correction_bias");
  const auto view = hf::router_view(hf::Source(src));
  // Scores whose two lowest are both in group 0: the plan takes the lowest of each group.
  const auto scores = torch::tensor({0.0, 1.0, 5.0, 6.0, 7.0, 4.0, 8.0, 9.0}, torch::kDouble);
  const auto plan = moeprune::pruning::PruningPlan::same_count({{0, scores}}, *view, 2);
  REQUIRE(plan.layers.front().pruned == std::vector<int64_t>{0, 5});
  const auto kept = kept_of({0, 5}, 8);

  const auto keep = GENERATE(false, true);
  INFO((keep ? "keep" : "cut"));
  const auto out = scratch() + std::string("/glm4_moe_") + (keep ? "keep" : "cut");
  hf::WriteOptions wo;
  wo.router = keep ? hf::RouterRows::kKeep : hf::RouterRows::kCut;
  hf::write_pruned_checkpoint(hf::Source(src), plan, out, wo);
  st::Checkpoint written(out);
  const auto bias = written.tensor(ref.router_bias);
  const auto src_bias = in.tensor(ref.router_bias);
  if (keep) {
    CHECK(torch::equal(bias, src_bias));
  } else {
    CHECK(torch::equal(bias, src_bias.index_select(0, torch::tensor(kept))));
    const auto config = hf::describe(out, written);
    CHECK(config.num_experts == 6);
    CHECK(config.group_routing->num_groups() == 2);  // groups of 3 now
  }
  // Reloaded, the layer routes and computes as the source layer pruned in memory (which
  // test_group_limited_router.cpp checks against the -inf reference).
  auto original = hf::load_moe_model(src).layers.at(0);
  original->keep_experts(kept, /*drop_router_columns=*/!keep);
  original->eval();
  auto loaded = hf::load_moe_model(out).layers.at(0);
  loaded->eval();
  torch::manual_seed(4);
  const auto x = torch::randn({2, 9, 16});
  torch::NoGradGuard no_grad;
  CHECK(torch::allclose(loaded->forward(x).output, original->forward(x).output, 1e-5, 1e-6));
}

TEST_CASE("plans that would break a checkpoint's expert groups are refused before writing") {
  const auto src = kFixtures + "/glm4_moe";
  moeprune::pruning::PruningPlan plan;
  plan.layers.push_back({0, 8, {0, 1}, {}});  // both from group 0
  const auto out = scratch() + "/glm4_moe_unequal";
  REQUIRE_THROWS_WITH(hf::write_pruned_checkpoint(hf::Source(src), plan, out),
                      Contains("group 1 of model.layers.1.mlp") && Contains("equal groups"));
  REQUIRE_FALSE(exists(out));
  // DeepSeek-V3 fixture: groups of 2 scored by their top two cannot lose any expert.
  const auto view = hf::router_view(hf::Source(kFixtures + "/deepseek_v3"));
  REQUIRE_THROWS_WITH(
      moeprune::pruning::PruningPlan::same_count({{0, torch::arange(8, torch::kDouble)}}, *view, 4),
      Contains("fewer than the 8 its router needs"));
}
