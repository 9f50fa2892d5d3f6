// The experiment harness (experiments/sweep.h, compression_compare.h) on the language task
// (experiments/lm_task.h) with a tiny Mixtral-style model and random byte streams: which experts
// each run prunes, that pruning nothing is one run, what each compression keeps, and the language
// sweep's journal lines written before cells had named metrics.
#include "lm_task.h"
#include "report.h"

#include <catch2/catch.hpp>

#include "../scratch_dir.h"

namespace lm = moeprune::lm;

namespace {

// d 16, 2 heads of 8, 2 layers of 4 SwiGLU experts of width 24, top-2, byte vocabulary.
lm::CausalLM tiny(uint64_t seed) {
  torch::manual_seed(seed);
  return lm::CausalLM(
      lm::CausalLMOptions(moeprune::data::kByteVocabSize, 16, 2, lm::AttentionOptions(16, 2, 2, 8))
          .moe_layers({true, true})
          .moe(moeprune::MoELayerOptions::preset("top_k_gated", 16, 24, 4)));
}

std::string save(lm::CausalLM& m, const std::string& name) {
  const auto dir = test::scratch_dir("moeprune-lm-demo-test") + "/" + name;
  if (!test::path_exists(dir)) lm::save_causal_lm(m, dir);
  return dir;
}

// A pre-trained and a fine-tuned model whose routers differ, and random byte streams.
struct Fixture {
  std::string pre, ft;
  experiments::FortuneTexts texts;
};

Fixture fixture() {
  Fixture f;
  auto pre = tiny(1);
  auto ft = tiny(2);
  f.pre = save(pre, "pre");
  f.ft = save(ft, "ft");
  torch::manual_seed(3);
  f.texts.language = "xx";
  f.texts.train = torch::randint(257, {2000}, torch::kLong);
  f.texts.test = torch::randint(257, {300}, torch::kLong);
  return f;
}

experiments::LMTaskConfig task_config(const Fixture& f, int64_t post_steps) {
  experiments::LMTaskConfig cfg;
  cfg.pretrained = f.pre;
  cfg.finetuned = f.ft;
  cfg.calibration_windows = 4;
  cfg.context = 16;
  cfg.post.steps(post_steps).batch_size(2).context(16);
  return cfg;
}

// The experts of `layer` with the lowest change of router-row norm, computed here.
std::vector<int64_t> lowest_norm_change(const std::string& pre, const std::string& ft,
                                        int64_t layer, int64_t n) {
  const auto norms = [&](const std::string& dir) {
    auto m = lm::load_causal_lm(dir);
    return m->moe_layers()[static_cast<size_t>(layer)].second->router().router_weight().norm(2,
                                                                                             {1});
  };
  const auto change = norms(ft) - norms(pre);
  auto order = change.argsort().narrow(0, 0, n);
  std::vector<int64_t> out(order.data_ptr<int64_t>(), order.data_ptr<int64_t>() + n);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST_CASE("the language sweep runs pruning nothing once and prunes the lowest-scored experts") {
  const auto f = fixture();
  const experiments::CausalLanguageModeling task(task_config(f, 0), f.texts);
  experiments::SweepConfig cfg;
  cfg.criteria = {"router_norm_change", "random"};
  cfg.counts = {0, 2};
  cfg.unpruned_once = true;
  // n = 0 once, router_norm_change at n = 2 once, random at n = 2 for 3 seeds.
  REQUIRE(experiments::sweep_runs(cfg) == 1 + 1 + 3);
  moeprune::ProgressBar bar(experiments::sweep_runs(cfg), "sweep", "runs", false);
  int64_t done = 0;
  experiments::RunJournal journal("", {});
  const auto cells = experiments::run_sweep(task, cfg, bar, done, &journal);
  CHECK(done == 5);
  // A cell per criterion, seed and count: router_norm_change 2, random 3 x 2.
  REQUIRE(cells.size() == 2 + 3 * 2);
  std::vector<std::map<int64_t, std::vector<int64_t>>> random_plans;
  double unpruned = -1;
  for (const auto& c : cells) {
    if (c.pruned == 0) {
      CHECK(c.pruned_experts.empty());
      if (unpruned < 0) unpruned = c.value("bits_per_byte");
      CHECK(c.value("bits_per_byte") == unpruned);
      CHECK_FALSE(c.has("bits_per_byte_finetuned"));  // no post-pruning fine-tune
    } else if (c.method == "router_norm_change") {
      for (const int64_t layer : {0, 1}) {
        CHECK(c.pruned_experts.at(layer) == lowest_norm_change(f.pre, f.ft, layer, 2));
      }
    } else {
      random_plans.push_back(c.pruned_experts);
    }
  }
  // Random bytes under a random model: about log2(257) bits per token, more per byte.
  CHECK(unpruned > 7.5);
  REQUIRE(random_plans.size() == 3);
  CHECK((random_plans[0] != random_plans[1] || random_plans[1] != random_plans[2]));
}

TEST_CASE("the language compression comparison keeps what each method promises") {
  const auto f = fixture();
  const experiments::CausalLanguageModeling task(task_config(f, 2), f.texts);
  experiments::CompressionConfig cfg;
  cfg.budgets = {2};
  cfg.layer_drops = {1};
  cfg.block_drops = {1};
  cfg.rank = 2;
  cfg.density = 0.25;
  cfg.slimming_methods = {"sparsegpt"};
  cfg.slimming_patterns = {"0.5"};
  cfg.slim_drop = 2;
  moeprune::ProgressBar bar(experiments::compression_runs(cfg), "compression", "runs", false);
  int64_t done = 0;
  experiments::RunJournal journal("", {});
  const auto cells = experiments::run_compression(task, cfg, &bar, &done, &journal);
  REQUIRE(static_cast<int64_t>(cells.size()) == experiments::compression_runs(cfg));
  std::map<std::string, experiments::Cell> by;
  const auto params = [&](const std::string& method) {
    return static_cast<int64_t>(by.at(method).value("parameters"));
  };
  for (const auto& c : cells) {
    by[c.method] = c;
    CHECK(c.value("bits_per_byte") > 0);
    CHECK(c.value("bits_per_byte_finetuned") > 0);
    CHECK(c.value("latency_ms") > 0);
    CHECK(c.metrics.at("bits_per_byte").unit == "bits/byte");
    CHECK_FALSE(c.metrics.at("bits_per_byte").higher_is_better);
    CHECK_FALSE(c.has("top1"));
  }
  const int64_t d = 16, F = 24, E = 4, expert = 3 * d * F;
  const int64_t full = params("fine-tuned");
  // 2 of 4 experts removed per layer: pruning and Expert Drop remove their router rows too (the
  // demo's default, drop_router_rows); M-SMoE keeps the router (2 merged experts serve 4 ids).
  CHECK(params("prune (router_norm_change)") == full - 2 * 2 * (expert + d));
  CHECK(params("Expert Drop") == full - 2 * 2 * (expert + d));
  CHECK(params("M-SMoE") == full - 2 * 2 * expert);
  // Layer Drop: one MoE block (4 experts, the router, the norm before it).
  CHECK(params("Layer Drop") == full - (E * expert + E * d + d));
  // Block Drop: one whole decoder layer (attention 4 * 16 * 16 too, and its first norm).
  CHECK(params("Block Drop") == full - (E * expert + E * d + 2 * d + 4 * d * d));
  CHECK(params("MC-SMoE") < params("M-SMoE"));
  // SparseGPT at 50% of every row of every expert weight (16 and 24 inputs: exactly half), the
  // zeros kept through the fine-tune (the parameters are counted after it). A hidden unit no
  // calibration token activates is zeroed whole (sparsegpt.py's "dead" inputs), so at least half.
  CHECK(params("SparseGPT (inside experts)") <= full - 2 * E * expert / 2);
  CHECK(params("SparseGPT (inside experts)") > full - 2 * E * expert / 2 - 2 * E * d * 4);
  // Expert Drop of 2 of 4 per layer (router rows too), then Wanda at 50% in the 2 left.
  CHECK(params("Expert Drop + Wanda") == full - 2 * 2 * (expert + d) - 2 * 2 * expert / 2);
  // A sweep run of the same pruning is taken, not run again (values no run could give).
  experiments::Cell same;
  same.model = task.name();  // another model's run of the same name is not taken
  same.method = "router_norm_change";
  same.pruned = 2;
  same.set(task.metrics().quality, 0.25);
  same.set(task.metrics().quality.finetuned(), 0.125);
  cfg.sweep = {same};
  cfg.budgets = {2};
  cfg.layer_drops = {};
  cfg.block_drops = {};
  cfg.slimming_methods = {};
  cfg.slim_drop = 0;
  experiments::RunJournal empty("", {});  // `journal` remembers the runs above
  const auto reused = experiments::run_compression(task, cfg, nullptr, nullptr, &empty);
  for (const auto& c : reused) {
    if (c.method == "prune (router_norm_change)") {
      CHECK(c.value("bits_per_byte") == 0.25);
      CHECK(c.value("bits_per_byte_finetuned") == 0.125);
      CHECK(c.value("parameters") == params("prune (router_norm_change)"));
      CHECK(c.detail == "bits per byte: the sweep's run");
    } else if (c.method == "fine-tuned") {
      // No unpruned run in this sweep: run here.
      CHECK(c.value("bits_per_byte") == by.at("fine-tuned").value("bits_per_byte"));
    }
  }
  // Another model's run of the same criterion and count is not taken: the row is run here.
  same.model = "another";
  cfg.sweep = {same};
  cfg.budgets = {2};
  const auto not_taken = experiments::run_compression(task, cfg);
  REQUIRE(not_taken.size() == 5);
  CHECK(not_taken[1].method == "prune (router_norm_change)");
  CHECK(not_taken[1].value("bits_per_byte") ==
        by.at("prune (router_norm_change)").value("bits_per_byte"));
  CHECK(not_taken[1].detail.empty());
  // FLOPs per token: the uncompressed model computes 2 expert rows per token in both layers.
  CHECK(by.at("fine-tuned").value("flops_per_token") -
            by.at("Layer Drop").value("flops_per_token") ==
        Approx(2.0 * d * E + 2 * 2.0 * expert));
}

TEST_CASE("journal lines of the language sweep and comparison from before named metrics are read") {
  // As the language demo's journal recorded them: the sweep's runs named bits per byte; the
  // comparison's rows used the vision row's fields, `top1` holding bits per byte and
  // `flops_per_image` FLOPs per token.
  experiments::TaskMetrics metrics;
  metrics.quality = {"bits_per_byte", "bits/byte", false};
  metrics.flops = {"flops_per_token", "FLOPs/token", false};
  metrics.parameters = {"parameters", "parameters", false};
  metrics.latency = {"latency_ms", "ms", false};
  const auto run = experiments::read_cell(nlohmann::json::parse(R"({"criterion": "random",
      "pruned_per_layer": 4, "seed": 2, "bits_per_byte": 2.5, "bits_per_byte_finetuned": 2.25,
      "pruned_experts": {"0": [1, 5], "3": [0, 2]}})"),
                                          metrics);
  CHECK(run.model.empty());  // its journal key names the model
  CHECK(run.method == "random");
  CHECK(run.pruned == 4);
  CHECK(run.seed == 2);
  CHECK(run.value("bits_per_byte") == 2.5);
  CHECK(run.value("bits_per_byte_finetuned") == 2.25);
  CHECK_FALSE(run.metrics.at("bits_per_byte").higher_is_better);
  CHECK(run.pruned_experts.at(3) == std::vector<int64_t>{0, 2});
  const auto row = experiments::read_cell(nlohmann::json::parse(R"json({"model": "lm",
      "method": "M-SMoE", "setting": "4 groups per layer (global)", "budget": 4,
      "parameters": 123456, "flops_per_image": 2000000.0, "latency_ms": 12.5, "top1": 2.75,
      "top1_finetuned": 2.5, "detail": "layer 0: 4"})json"),
                                          metrics);
  CHECK(row.method == "M-SMoE");
  CHECK(row.budget == 4);
  CHECK(row.value("bits_per_byte") == 2.75);
  CHECK(row.value("bits_per_byte_finetuned") == 2.5);
  CHECK(row.value("flops_per_token") == 2000000.0);
  CHECK(row.value("parameters") == 123456);
  CHECK_FALSE(row.has("top1"));
  CHECK_FALSE(row.has("flops_per_image"));
  CHECK_THROWS_WITH(row.value("top1"),
                    Catch::Contains("the result of lm M-SMoE 4 groups per layer (global) has no "
                                    "metric 'top1'"));
  // Written again, a cell reads back whole in the new form.
  const auto again = experiments::read_cell(nlohmann::json(row), metrics);
  CHECK(again.value("flops_per_token") == 2000000.0);
  CHECK(again.metrics.at("flops_per_token").unit == "FLOPs/token");
  CHECK(again.detail == "layer 0: 4");
}
