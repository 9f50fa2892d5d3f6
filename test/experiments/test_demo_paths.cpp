// The experiment harness (experiments/sweep.h, compression_compare.h, cell.h) on the vision task
// (experiments/vision_task.h) with tiny models and data: which experts each run prunes, what each
// compression keeps, and journals resumed, those written before cells had named metrics too.
#include "report.h"
#include "vision_task.h"

#include <catch2/catch.hpp>

#include "../scratch_dir.h"

namespace pr = moeprune::pruning;
using moeprune::VisionTransformer;
using moeprune::VisionTransformerOptions;

namespace {

VisionTransformerOptions tiny() {
  return VisionTransformerOptions::small("small_vmoe", 4)
      .d_model(16)
      .mlp_dim(24)
      .depth(4)
      .heads(2)
      .moe_blocks({1, 3});
}

moeprune::data::ImageDataset random_images(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  moeprune::data::ImageDataset d;
  d.images = torch::randint(0, 255, {n, 1, 28, 28}, torch::kLong).to(torch::kUInt8);
  d.labels = torch::randint(0, 4, {n}, torch::kLong);
  d.num_classes = 4;
  return d;
}

std::string save(VisionTransformer& m, const std::string& name) {
  const auto path = test::scratch_dir("moeprune-demo-test") + "/" + name + ".pt";
  moeprune::save_vision_transformer(path, m,
                                    experiments::task_metadata(experiments::DataArgs{}, {}));
  return path;
}

// A pre-trained and a fine-tuned model whose routers differ.
std::pair<std::string, std::string> checkpoints() {
  torch::manual_seed(1);
  VisionTransformer pre(tiny());
  const auto pre_path = save(pre, "pre");
  torch::manual_seed(2);
  VisionTransformer ft(tiny());
  return {pre_path, save(ft, "ft")};
}

// The vision task on the tiny checkpoints, without post-pruning fine-tuning.
experiments::VisionTaskConfig task_config(const std::string& pre, const std::string& ft) {
  experiments::VisionTaskConfig cfg;
  cfg.model_name = "tiny";
  cfg.pretrained = pre;
  cfg.finetuned = ft;
  cfg.post_steps = 0;
  cfg.calibration = 16;
  return cfg;
}

experiments::SweepConfig sweep_config(std::vector<std::string> criteria) {
  experiments::SweepConfig cfg;
  cfg.criteria = std::move(criteria);
  cfg.counts = {0, 3};
  return cfg;
}

// A comparison of the tiny checkpoints: the uncompressed row and one Layer Drop, no budgets.
experiments::CompressionConfig compression_config() {
  experiments::CompressionConfig cfg;
  cfg.budgets = {};
  cfg.layer_drops = {1};
  cfg.block_drops = {};
  cfg.slimming_methods = {};
  cfg.slim_drop = 0;
  return cfg;
}

}  // namespace

TEST_CASE("the sweep prunes other experts for each seed of the random criterion") {
  const auto [pre, ft] = checkpoints();
  const experiments::VisionClassification task(task_config(pre, ft),
                                               {random_images(64, 3), random_images(32, 4), {}});
  const auto cfg = sweep_config({"random", "router_norm_change"});
  moeprune::ProgressBar bar(experiments::sweep_runs(cfg), "sweep", "runs", false);
  int64_t done = 0;
  const auto cells = experiments::run_sweep(task, cfg, bar, done);
  REQUIRE(cells.size() == 3 * 2 + 2);
  std::vector<std::map<int64_t, std::vector<int64_t>>> random_plans;
  for (const auto& c : cells) {
    if (c.method == "random" && c.pruned == 3) {
      random_plans.push_back(c.pruned_experts);
      // The plan RandomCriterion gives for this seed.
      pr::CriterionContext ctx;
      ctx.finetuned = moeprune::moe_view(experiments::load_model(ft));
      ctx.seed = c.seed;
      const auto scores = pr::score_experts(pr::RandomCriterion(), ctx);
      for (const auto& [block, experts] : c.pruned_experts) {
        const auto order = std::get<1>(scores.at(block).sort());
        std::vector<int64_t> lowest(order.data_ptr<int64_t>(), order.data_ptr<int64_t>() + 3);
        std::sort(lowest.begin(), lowest.end());
        CHECK(experts == lowest);
      }
    }
    if (c.pruned == 0) {
      CHECK(c.pruned_experts.at(1).empty());
    }
  }
  REQUIRE(random_plans.size() == 3);
  CHECK(random_plans[0] != random_plans[1]);
  CHECK(random_plans[1] != random_plans[2]);
  CHECK(random_plans[0] != random_plans[2]);
  // router_norm_change: the three experts whose router rows grew least, by hand.
  const auto pre_model = experiments::load_model(pre), ft_model = experiments::load_model(ft);
  for (const auto& c : cells) {
    if (c.method != "router_norm_change" || c.pruned != 3) continue;
    for (const int64_t block : {1, 3}) {
      const auto delta = ft_model->blocks[block]->moe->router().router_weight().norm(2, 1) -
                         pre_model->blocks[block]->moe->router().router_weight().norm(2, 1);
      const auto order = std::get<1>(delta.sort());
      std::vector<int64_t> lowest(order.data_ptr<int64_t>(), order.data_ptr<int64_t>() + 3);
      std::sort(lowest.begin(), lowest.end());
      CHECK(c.pruned_experts.at(block) == lowest);
    }
  }
}

TEST_CASE("the compression comparison matches budgets and keeps what each method promises") {
  const auto [pre, ft] = checkpoints();
  auto task_cfg = task_config(pre, ft);
  task_cfg.post_steps = 3;
  const experiments::VisionClassification task(task_cfg,
                                               {random_images(64, 5), random_images(32, 6), {}});
  auto cfg = compression_config();
  cfg.budgets = {4};
  cfg.rank = 2;
  cfg.density = 0.25;
  cfg.layer_drops = {1};
  cfg.block_drops = {1};
  cfg.slimming_methods = {"wanda"};
  cfg.slimming_patterns = {"2:4"};
  cfg.slim_drop = 2;
  const auto cells = experiments::run_compression(task, cfg);
  REQUIRE(static_cast<int64_t>(cells.size()) == experiments::compression_runs(cfg));
  std::map<std::string, experiments::Cell> by;
  const auto params = [&](const std::string& method) {
    return static_cast<int64_t>(by.at(method).value("parameters"));
  };
  for (const auto& c : cells) {
    by[c.method] = c;
    CHECK(c.value("top1") >= 0);
    CHECK(c.value("top1_finetuned") >= 0);
    CHECK(c.value("latency_ms") > 0);
    CHECK(c.value("flops_per_image") > 0);
    CHECK(c.metrics.at("top1").unit == "fraction");
    CHECK(c.metrics.at("top1").higher_is_better);
    CHECK_FALSE(c.metrics.at("latency_ms").higher_is_better);
  }
  const int64_t d = 16, F = 24, E = 8, expert = d * F + F + F * d + d;
  const int64_t full = params("fine-tuned");
  // Pruning (router kept) and M-SMoE (router kept, 4 merged experts) store the same; Expert
  // Drop also removes 4 router rows per layer.
  CHECK(params("prune (router_norm_change)") == full - 2 * 4 * expert);
  CHECK(params("M-SMoE") == full - 2 * 4 * expert);
  CHECK(params("Expert Drop") == full - 2 * 4 * (expert + d));
  // MC-SMoE: 4 experts per layer as L R + 25% of S's output units (floor over all units).
  const int64_t factors = 2 * 4 * 2 * 2 * (d + F), units = 2 * 4 * (F + d);
  const int64_t kept_units = units - units * 3 / 4;
  const int64_t sparse_max = kept_units * F;  // an output unit of S holds d (w1) or F (w2) entries
  const int64_t base = full - 2 * E * expert + 2 * 4 * (F + d);  // biases stay
  CHECK(params("MC-SMoE") >= base + factors + kept_units * d);
  CHECK(params("MC-SMoE") <= base + factors + sparse_max);
  CHECK(params("Layer Drop") == full - (E * expert + E * d + 2 * d));
  CHECK(params("Block Drop") < full);
  // Wanda 2:4 inside every expert: half of each weight matrix (d x F twice, no gate) is zero and
  // stays zero through the fine-tune (the parameters are counted after it); biases are kept.
  CHECK(params("Wanda (inside experts)") == full - 2 * E * (2 * d * F) / 2);
  CHECK(by.at("Wanda (inside experts)").budget == E);
  // Expert Drop of 2 per layer (router rows too), then Wanda 2:4 in the 6 experts left.
  CHECK(params("Expert Drop + Wanda") == full - 2 * 2 * (expert + d) - 2 * 6 * (2 * d * F) / 2);
  CHECK(by.at("Layer Drop").detail.rfind("blocks ", 0) == 0);
  CHECK(by.at("fine-tuned").value("flops_per_image") >
        by.at("Layer Drop").value("flops_per_image"));
}

TEST_CASE("the run journal keeps finished runs across restarts and skips a line cut short") {
  const auto path = test::scratch_dir("moeprune-demo-test") + "/journal.jsonl";
  std::filesystem::remove(path);
  const nlohmann::json settings = {{"post_steps", 3}}, other = {{"post_steps", 4}};
  {
    experiments::RunJournal journal(path, settings);
    CHECK(journal.size() == 0);
    journal.record("a", {{"x", 1}}, 1.5);
    journal.record("b", {{"x", 2}}, 2.25);
  }
  // A line with no time (as the first journals wrote), then a line cut short by a crash.
  std::ofstream(path, std::ios::app) << R"({"key": "d", "settings": {"post_steps": 3}, "run": 4})"
                                     << "\n"
                                     << R"({"key": "c", "settings": {"post_ste)";
  experiments::RunJournal reopened(path, settings);
  CHECK(reopened.size() == 3);
  CHECK(reopened.skipped() == 1);
  const auto b = reopened.find("b");
  REQUIRE(b);
  CHECK(b->at("x") == 2);
  CHECK_FALSE(reopened.find("c"));
  CHECK(reopened.reused() == 1);
  CHECK(reopened.reused_seconds() == 2.25);
  CHECK(reopened.reused_untimed() == 0);
  REQUIRE(reopened.find("d"));
  CHECK(reopened.reused_untimed() == 1);
  CHECK(reopened.reused_seconds() == 2.25);
  // Runs made under other settings are not reused.
  CHECK(experiments::RunJournal(path, other).size() == 0);
  // 1.5 + 2.25 s reused and 0.5 minutes here: 0.1 minutes in the journal, 0.6 in all.
  CHECK(reopened.find("a"));
  CHECK(experiments::describe_reused(reopened, 0.5) ==
        " here; 3 runs came from the journal, which took 0.1 minutes when they ran (1 of them "
        "with no time recorded), so 0.6 minutes in all");
  CHECK(experiments::describe_reused(experiments::RunJournal(path, settings), 0.5).empty());
  // --fresh moves the journal aside, whole, and starts an empty one.
  const auto before = std::filesystem::file_size(path);
  CHECK(experiments::open_run_journal(path, settings, /*fresh=*/true).size() == 0);
  CHECK(std::filesystem::file_size(path + ".old") == before);
  CHECK_FALSE(std::filesystem::exists(path));
  // A checkpoint's fingerprint follows its bytes (FNV-1a 64 of "a" is af63dc4c8601ec8c).
  const auto file = test::scratch_dir("moeprune-demo-test") + "/fingerprint.bin";
  std::ofstream(file, std::ios::binary) << "a";
  CHECK(experiments::file_fingerprint(file) == "af63dc4c8601ec8c");
  CHECK_THROWS_WITH(experiments::file_fingerprint(file + ".missing"),
                    Catch::Contains("cannot read '" + file + ".missing' to fingerprint it"));
}

TEST_CASE(
    "an interrupted sweep resumes: recorded runs are reused, the others and incomplete ones run "
    "and are recorded") {
  const auto [pre, ft] = checkpoints();
  const experiments::VisionClassification task(task_config(pre, ft),
                                               {random_images(64, 3), random_images(32, 4), {}});
  const auto cfg = sweep_config({"router_norm_change"});
  const auto path = test::scratch_dir("moeprune-demo-test") + "/sweep.jsonl";
  std::filesystem::remove(path);
  {
    // A run that finished before the interruption, with an accuracy no real run gives here.
    experiments::RunJournal journal(path, {});
    experiments::Cell earlier;
    earlier.model = "tiny";
    earlier.method = "router_norm_change";
    earlier.pruned = 3;
    earlier.set(task.metrics().quality, 0.123);
    earlier.pruned_experts[1] = {0, 1, 2};
    journal.record(experiments::sweep_key("tiny", "router_norm_change", 3, 0), earlier, 7.0);
    // A line with no accuracy (as a broken writer might leave): run again, not reused as 0.
    journal.record(experiments::sweep_key("tiny", "router_norm_change", 0, 0),
                   nlohmann::json::parse(R"({"model": "tiny", "criterion": "router_norm_change",
                     "pruned_per_layer": 0, "seed": 0, "pruned_experts": {}})"),
                   5.0);
  }
  experiments::RunJournal journal(path, {});
  moeprune::ProgressBar bar(experiments::sweep_runs(cfg), "sweep", "runs", false);
  int64_t done = 0;
  const auto cells = experiments::run_sweep(task, cfg, bar, done, &journal);
  REQUIRE(cells.size() == 2);
  CHECK(done == 2);
  CHECK(journal.reused() == 1);
  CHECK(journal.reused_seconds() == 7.0);
  CHECK(cells[0].pruned == 0);
  CHECK(cells[0].value("top1") != 0.123);
  CHECK(cells[1].value("top1") == 0.123);
  CHECK(cells[1].pruned_experts.at(1) == std::vector<int64_t>{0, 1, 2});
  // The new run was appended: reopening finds both.
  experiments::RunJournal after(path, {});
  CHECK(after.size() == 2);
  const auto recorded = after.find(experiments::sweep_key("tiny", "router_norm_change", 0, 0));
  REQUIRE(recorded);
  CHECK(experiments::read_cell(*recorded, task.metrics()).value("top1") == cells[0].value("top1"));
  CHECK(after.reused_seconds() > 0);  // the new run's time was recorded with it
  CHECK(after.reused_untimed() == 0);
}

TEST_CASE("the compression comparison resumes from a journal written before named metrics") {
  const auto [pre, ft] = checkpoints();
  const experiments::VisionClassification task(task_config(pre, ft),
                                               {random_images(64, 5), random_images(32, 6), {}});
  const auto cfg = compression_config();
  const auto path = test::scratch_dir("moeprune-demo-test") + "/compression.jsonl";
  std::filesystem::remove(path);
  {
    // A row as the comparison's journal recorded it before cells had named metrics (its fields
    // fixed, -1 for a fine-tune that did not run).
    experiments::RunJournal journal(path, {});
    journal.record("compression/tiny/Layer Drop/1 of 2 MoE layers",
                   nlohmann::json::parse(R"({"model": "tiny", "method": "Layer Drop",
                     "setting": "1 of 2 MoE layers", "budget": 4, "parameters": 42,
                     "flops_per_image": 1500.0, "latency_ms": 2.5, "top1": 0.75,
                     "top1_finetuned": -1.0, "detail": "blocks 3"})"),
                   3.0);
  }
  experiments::RunJournal journal(path, {});
  const auto cells = experiments::run_compression(task, cfg, nullptr, nullptr, &journal);
  REQUIRE(cells.size() == 2);
  CHECK(cells[0].method == "fine-tuned");
  CHECK(cells[0].value("parameters") > 42);
  CHECK(cells[1].method == "Layer Drop");
  CHECK(cells[1].budget == 4);
  CHECK(cells[1].value("parameters") == 42);
  CHECK(cells[1].value("flops_per_image") == 1500.0);
  CHECK(cells[1].value("latency_ms") == 2.5);
  CHECK(cells[1].value("top1") == 0.75);
  CHECK(cells[1].metrics.at("top1").unit == "fraction");
  CHECK_FALSE(cells[1].has("top1_finetuned"));
  CHECK(cells[1].detail == "blocks 3");
  CHECK(experiments::RunJournal(path, {}).size() == 2);
}
