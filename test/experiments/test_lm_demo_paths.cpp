// The language demo's sweep and compression comparison (experiments/lm_sweep.h,
// experiments/lm_compare.h) on a tiny Mixtral-style model and random byte streams: which experts
// each run prunes, that pruning nothing is one run, and what each compression keeps.
#include "lm_compare.h"
#include "lm_sweep.h"

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
  experiments::LMTask task;
};

Fixture fixture() {
  Fixture f;
  auto pre = tiny(1);
  auto ft = tiny(2);
  f.pre = save(pre, "pre");
  f.ft = save(ft, "ft");
  torch::manual_seed(3);
  f.task.language = "xx";
  f.task.train = torch::randint(257, {2000}, torch::kLong);
  f.task.test = torch::randint(257, {300}, torch::kLong);
  return f;
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
  experiments::LMSweepConfig cfg;
  cfg.pretrained = f.pre;
  cfg.finetuned = f.ft;
  cfg.criteria = {"router_norm_change", "random"};
  cfg.counts = {0, 2};
  cfg.calibration_windows = 4;
  cfg.context = 16;
  cfg.post.steps(0);
  // n = 0 once, router_norm_change at n = 2 once, random at n = 2 for 3 seeds.
  REQUIRE(experiments::lm_sweep_runs(cfg) == 1 + 1 + 3);
  moeprune::ProgressBar bar(experiments::lm_sweep_runs(cfg), "sweep", "runs", false);
  int64_t done = 0;
  experiments::RunJournal journal("", {});
  const auto cells = experiments::run_lm_sweep(cfg, f.task, bar, done, &journal);
  CHECK(done == 5);
  // A cell per criterion, seed and count: router_norm_change 2, random 3 x 2.
  REQUIRE(cells.size() == 2 + 3 * 2);
  std::vector<std::map<int64_t, std::vector<int64_t>>> random_plans;
  double unpruned = -1;
  for (const auto& c : cells) {
    if (c.pruned == 0) {
      CHECK(c.pruned_experts.empty());
      if (unpruned < 0) unpruned = c.bpb;
      CHECK(c.bpb == unpruned);
    } else if (c.criterion == "router_norm_change") {
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
  experiments::LMCompressionConfig cfg;
  cfg.pretrained = f.pre;
  cfg.finetuned = f.ft;
  cfg.budgets = {2};
  cfg.layer_drops = {1};
  cfg.block_drops = {1};
  cfg.calibration_windows = 4;
  cfg.context = 16;
  cfg.rank = 2;
  cfg.density = 0.25;
  cfg.post.steps(2).batch_size(2).context(16);
  moeprune::ProgressBar bar(experiments::lm_compression_runs(cfg), "compression", "runs", false);
  int64_t done = 0;
  experiments::RunJournal journal("", {});
  const auto cells = experiments::run_lm_compression(cfg, f.task, bar, done, &journal);
  REQUIRE(static_cast<int64_t>(cells.size()) == experiments::lm_compression_runs(cfg));
  std::map<std::string, experiments::CompressionCell> by;
  for (const auto& c : cells) {
    by[c.method] = c;
    CHECK(c.top1 > 0);  // bits per byte
    CHECK(c.top1_finetuned > 0);
    CHECK(c.latency_ms > 0);
  }
  const int64_t d = 16, F = 24, E = 4, expert = 3 * d * F;
  const int64_t full = by.at("fine-tuned").parameters;
  // 2 of 4 experts removed per layer: pruning and Expert Drop remove their router rows too (the
  // demo's default, drop_router_rows); M-SMoE keeps the router (2 merged experts serve 4 ids).
  CHECK(by.at("prune (router_norm_change)").parameters == full - 2 * 2 * (expert + d));
  CHECK(by.at("Expert Drop").parameters == full - 2 * 2 * (expert + d));
  CHECK(by.at("M-SMoE").parameters == full - 2 * 2 * expert);
  // Layer Drop: one MoE block (4 experts, the router, the norm before it).
  CHECK(by.at("Layer Drop").parameters == full - (E * expert + E * d + d));
  // Block Drop: one whole decoder layer (attention 4 * 16 * 16 too, and its first norm).
  CHECK(by.at("Block Drop").parameters == full - (E * expert + E * d + 2 * d + 4 * d * d));
  CHECK(by.at("MC-SMoE").parameters < by.at("M-SMoE").parameters);
  // A sweep run of the same pruning is taken, not run again (values no run could give).
  experiments::LMSweepCell same;
  same.criterion = "router_norm_change";
  same.pruned = 2;
  same.bpb = 0.25;
  same.bpb_finetuned = 0.125;
  cfg.sweep = {same};
  cfg.budgets = {2};
  cfg.layer_drops = {};
  cfg.block_drops = {};
  moeprune::ProgressBar again(experiments::lm_compression_runs(cfg), "compression", "", false);
  experiments::RunJournal empty("", {});  // `journal` remembers the runs above
  const auto reused = experiments::run_lm_compression(cfg, f.task, again, done, &empty);
  for (const auto& c : reused) {
    if (c.method == "prune (router_norm_change)") {
      CHECK(c.top1 == 0.25);
      CHECK(c.top1_finetuned == 0.125);
      CHECK(c.parameters == by.at("prune (router_norm_change)").parameters);
    } else if (c.method == "fine-tuned") {
      CHECK(c.top1 == by.at("fine-tuned").top1);  // no unpruned run in this sweep: run here
    }
  }
  // FLOPs per token: the uncompressed model computes 2 expert rows per token in both layers.
  CHECK(by.at("fine-tuned").flops_per_image - by.at("Layer Drop").flops_per_image ==
        Approx(2.0 * d * E + 2 * 2.0 * expert));
}
