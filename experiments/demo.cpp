// The main demo: reproduces the expert-pruning experiment of Chowdhury et al. (ICML 2024) on
// Fashion-MNIST. Pre-trains a small V-MoE on the 10 classes (cached), fine-tunes it on a
// downstream task built from the same images (cached), then sweeps every pruning criterion and
// ratio, with and without a short post-pruning fine-tune, compares pruning with the other
// compressions (M-SMoE, MC-SMoE, Expert/Layer/Block Drop) at matched budgets, and writes tables,
// JSON, CSV and PNG plots. --full adds the expert-choice and E3-MoE variants, every pruning ratio
// and more drop settings.
#include "machine_info.h"
#include "report.h"
#include "vision_task.h"

#include <cstdlib>

namespace {

// The data set and its downstream task. Fashion-MNIST: the four upper-body garments (T-shirt/top,
// Pullover, Coat, Shirt). They are the classes the pre-trained model confuses most, and the six
// others (trousers, dresses, footwear, bags) become task-irrelevant, the setting of the paper's
// theory: experts that served them should matter little after fine-tuning. docs/reproduction.md
// says more. CIFAR-10, by the same reasoning: the four mammals (cat, deer, dog, horse) against
// vehicles, birds and frogs.
struct DemoData {
  experiments::DataArgs args;
  std::string title;          // for messages and plots
  std::vector<int64_t> task;  // class -> task label, -1 dropped
  std::vector<std::string> task_names;
  std::string pretrained_tag, finetuned_tag;  // cache file names
};

DemoData demo_data(const std::string& name, const std::string& dir) {
  DemoData d;
  d.args.data = name;
  d.args.dir = dir;
  if (name == "cifar10") {
    d.title = "CIFAR-10";
    d.task = {-1, -1, -1, 0, 1, 2, -1, 3, -1, -1};
    d.task_names = {"cat", "deer", "dog", "horse"};
    d.pretrained_tag = "cifar10_";
    d.finetuned_tag = "_mammals4";
  } else {
    d.title = "Fashion-MNIST";
    d.task = {0, -1, 1, -1, 2, -1, 3, -1, -1, -1};
    d.task_names = {"T-shirt/top", "Pullover", "Coat", "Shirt"};
    d.finetuned_tag = "_tops4";  // the cache names the demo always used
  }
  return d;
}

std::string home_cache() {
  const char* home = std::getenv("HOME");
  return std::string(home ? home : ".") + "/.cache/moeprune/demo";
}

// Trains `preset` on `splits` (or reuses the checkpoint at `path`) and returns the path.
void pretrain(const std::string& preset, const experiments::Splits& splits, const DemoData& data,
              const std::string& path, int64_t epochs, bool fresh) {
  if (!fresh && std::filesystem::exists(path)) {
    fmt::print("[1/4] pre-trained {}: reusing {} (--fresh retrains)\n", preset, path);
    return;
  }
  fmt::print("[1/4] pre-training {} on all {} classes of {}, {} epochs\n", preset,
             splits.train.num_classes, data.title, epochs);
  std::fflush(stdout);
  torch::manual_seed(0);
  const auto options = experiments::fit_to_data(
      moeprune::VisionTransformerOptions::small(preset, splits.train.num_classes), splits.train);
  moeprune::VisionTransformer vit(options);
  experiments::TrainArgs args;
  args.epochs = epochs;
  args.lr = 2e-3;
  args.warmup = 200;
  moeprune::Trainer trainer(vit, experiments::trainer_options(args, splits.train));
  const auto log = trainer.fit(splits.train, &splits.test);
  experiments::print_eval("      pre-trained", log.back().eval);
  moeprune::save_vision_transformer(path, vit, experiments::task_metadata(data.args, {}));
}

void finetune(const std::string& pretrained, const experiments::Splits& task, const DemoData& data,
              const std::string& path, bool fresh) {
  if (!fresh && std::filesystem::exists(path)) {
    fmt::print("[2/4] fine-tuned: reusing {}\n", path);
    return;
  }
  fmt::print("[2/4] fine-tuning on the 4-way task (new head, capacity factor 1.5, 1 epoch)\n");
  std::fflush(stdout);
  torch::manual_seed(0);
  auto vit = moeprune::load_vision_transformer(pretrained);
  vit->replace_head(task.train.num_classes);
  vit->set_capacity_factor(1.5);
  experiments::TrainArgs args;
  args.epochs = 1;
  args.lr = 0.01;
  args.optimizer = "sgd";
  args.weight_decay = 0;
  args.clip = 10;
  moeprune::Trainer trainer(vit, experiments::trainer_options(args, task.train));
  const auto log = trainer.fit(task.train, &task.test);
  experiments::print_eval("      fine-tuned", log.back().eval);
  moeprune::save_vision_transformer(path, vit, experiments::task_metadata(data.args, task.mapping));
}

int run(int argc, char** argv) {
  CLI::App app{
      "moeprune demo: pre-train a small V-MoE on Fashion-MNIST (or CIFAR-10), fine-tune it on a "
      "4-way task, compare expert-pruning criteria at every pruning ratio, and compare pruning "
      "with merging, MC-SMoE and Expert/Layer/Block Drop."};
  bool full = false, fresh = false, no_compression = false;
  std::string cache = home_cache(), out = "demo-results", criteria;
  int64_t threads = 0, post_steps = -1, pretrain_epochs = 6;
  app.add_flag("--full", full,
               "Whole sweep: also expert choice and E3-MoE, every pruning ratio, longer "
               "post-pruning fine-tuning, more Layer/Block Drop settings (about 3 hours on 2 "
               "cores)");
  app.add_flag("--fresh", fresh, "Retrain instead of reusing the cached checkpoints");
  app.add_flag("--no-compression", no_compression,
               "Skip the comparison with merging, MC-SMoE and Expert/Layer/Block Drop");
  app.add_option("--cache-dir", cache, "Where the pre-trained and fine-tuned checkpoints are kept")
      ->capture_default_str();
  app.add_option("--out-dir", out, "Where the table, JSON, CSV and plots go")
      ->capture_default_str();
  app.add_option("--pretrain-epochs", pretrain_epochs, "Pre-training epochs")
      ->capture_default_str();
  app.add_option("--post-steps", post_steps,
                 "Post-pruning fine-tuning steps (default 100, --full 300)");
  app.add_option("--criteria", criteria,
                 "Only these criteria, comma-separated (default: the seven of the documented "
                 "results; ean and naee run when named)");
  app.add_option("--threads", threads, "Torch threads (0: torch's default)");
  std::string data_name = "fashion-mnist", data_dir;
  app.add_option("--data", data_name,
                 "fashion-mnist (Debian's package), or cifar10 with --data-dir (the "
                 "cifar-10-batches-bin folder of CIFAR-10's binary version)")
      ->check(CLI::IsMember({"fashion-mnist", "cifar10"}))
      ->capture_default_str();
  app.add_option("--data-dir", data_dir,
                 "Folder of the data files (default for fashion-mnist: "
                 "/usr/share/datasets/fashion-mnist)");
  CLI11_PARSE(app, argc, argv);
  TORCH_CHECK(data_name != "cifar10" || !data_dir.empty(),
              "--data cifar10 needs --data-dir (the cifar-10-batches-bin folder)");

  const auto criteria_names =
      experiments::parse_criteria(moeprune::pruning::CriterionRegistry::with_builtins(), criteria);
  const auto start = std::chrono::steady_clock::now();
  experiments::set_up_process(threads);
  std::filesystem::create_directories(cache);
  std::filesystem::create_directories(out);
  const auto data = demo_data(data_name, data_dir);
  const auto all = experiments::load_splits(data.args);
  const auto task = experiments::load_splits(data.args, data.task);
  fmt::print("{}: {} training / {} test images; task: {} ({} / {} images)\n", data.title,
             all.train.size(), all.test.size(), fmt::join(data.task_names, ", "), task.train.size(),
             task.test.size());

  const std::vector<std::string> presets =
      full ? std::vector<std::string>{"small_vmoe", "small_expert_choice", "small_e3moe"}
           : std::vector<std::string>{"small_vmoe"};
  // One task per model (its checkpoints, data and post-pruning fine-tune), swept and compared.
  std::vector<std::unique_ptr<experiments::VisionClassification>> tasks;
  std::vector<experiments::SweepConfig> sweeps;
  const int64_t post = post_steps >= 0 ? post_steps : (full ? 300 : 100);
  for (const auto& preset : presets) {
    experiments::VisionTaskConfig cfg;
    cfg.model_name = preset;
    cfg.description = "4-way " + data.title + " task";
    cfg.pretrained = cache + "/pretrained_" + data.pretrained_tag + preset + ".pt";
    cfg.finetuned =
        cache + "/finetuned_" + data.pretrained_tag + preset + data.finetuned_tag + ".pt";
    cfg.post_steps = post;
    pretrain(preset, all, data, cfg.pretrained, pretrain_epochs, fresh);
    finetune(cfg.pretrained, task, data, cfg.finetuned, fresh);
    const auto experts = experiments::read_metadata(cfg.finetuned).options.num_experts();
    std::vector<int64_t> wanted;
    for (int64_t n = 0; n < experts; n += full ? 1 : 2) {
      wanted.push_back(n);
    }
    experiments::SweepConfig sweep;
    sweep.criteria = criteria_names;
    sweep.counts = experiments::feasible_counts(cfg.finetuned, wanted);
    sweeps.push_back(sweep);
    tasks.push_back(std::make_unique<experiments::VisionClassification>(cfg, task));
  }

  // The compression comparison: V-MoE (and expert choice with --full). E3-MoE's members route
  // separately, so its experts are neither merged nor dropped by routing score.
  std::vector<std::pair<const experiments::VisionClassification*, experiments::CompressionConfig>>
      compressions;
  for (const auto& t : tasks) {
    if (no_compression || t->name() == "small_e3moe") {
      continue;
    }
    experiments::CompressionConfig c;
    for (int64_t kept = t->shape().experts - 2; kept >= 1; kept -= 2) {
      c.budgets.push_back(kept);
    }
    c.layer_drops = full ? std::vector<int64_t>{1, 2} : std::vector<int64_t>{1};
    c.block_drops = full ? std::vector<int64_t>{1, 2, 3} : std::vector<int64_t>{1, 2};
    compressions.emplace_back(t.get(), c);
  }

  // Finished runs go to a journal as they end, so an interrupted run resumes where it stopped.
  // Its settings name everything the runs depend on besides their own key.
  nlohmann::json settings = {
      {"data", data.title}, {"post_steps", post}, {"checkpoints", nlohmann::json::object()}};
  for (const auto& t : tasks) {
    settings["checkpoints"][t->name()] = {experiments::file_fingerprint(t->config().pretrained),
                                          experiments::file_fingerprint(t->config().finetuned)};
  }
  auto journal = experiments::open_run_journal(out + "/runs.jsonl", settings, fresh);

  int64_t sweep_total = 0, compression_total = 0;
  for (const auto& sweep : sweeps) sweep_total += experiments::sweep_runs(sweep);
  for (const auto& [t, c] : compressions) compression_total += experiments::compression_runs(c);
  fmt::print(
      "[3/4] pruning sweep: {} runs (criteria x experts pruned per layer, random x 3 seeds)\n",
      sweep_total);
  std::fflush(stdout);
  moeprune::ProgressBar bar(sweep_total, "sweep", "runs");
  int64_t done = 0;
  std::vector<experiments::Cell> cells;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const auto c = experiments::run_sweep(*tasks[i], sweeps[i], bar, done, &journal);
    cells.insert(cells.end(), c.begin(), c.end());
  }
  bar.finish();

  std::vector<experiments::Cell> compressed;
  if (!compressions.empty()) {
    fmt::print(
        "[4/4] compressions compared: {} runs (pruning, M-SMoE, MC-SMoE, Expert Drop at matched "
        "experts per layer; Layer Drop, Block Drop; magnitude, Wanda, SparseGPT inside the "
        "experts at 50% and 2:4, and Expert Drop + Wanda)\n",
        compression_total);
    std::fflush(stdout);
    moeprune::ProgressBar cbar(compression_total, "compression", "runs");
    int64_t cdone = 0;
    for (const auto& [t, c] : compressions) {
      const auto rows = experiments::run_compression(*t, c, &cbar, &cdone, &journal);
      compressed.insert(compressed.end(), rows.begin(), rows.end());
    }
    cbar.finish();
  } else {
    fmt::print("[4/4] compression comparison skipped\n");
  }
  const auto resumed = journal.reused();
  const double minutes =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 60.0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    experiments::print_sweep_table(cells, *tasks[i], sweeps[i]);
    const auto png = experiments::plot_sweep(cells, *tasks[i], sweeps[i], out);
    fmt::print("      {}\n", png.empty() ? "gnuplot failed for the sweep plot" : "plot: " + png);
  }
  for (const auto& [t, c] : compressions) {
    std::vector<experiments::Cell> rows;
    for (const auto& r : compressed) {
      if (r.model == t->name()) rows.push_back(r);
    }
    experiments::print_compression_table(rows, *t);
    const auto png = experiments::plot_compression(rows, *t, out);
    fmt::print("      {}\n",
               png.empty() ? "gnuplot failed for the compression plot" : "plot: " + png);
  }
  const nlohmann::json header = {{"machine", bench::machine_info()},
                                 {"data", data.title},
                                 {"task", data.task_names},
                                 {"full", full},
                                 {"minutes", minutes},
                                 {"runs_reused_from_journal", resumed},
                                 {"reused_runs_minutes", journal.reused_seconds() / 60.0},
                                 {"reused_runs_untimed", journal.reused_untimed()},
                                 {"post_steps", post}};
  const auto& metrics = tasks.front()->metrics();
  experiments::write_sweep(cells, metrics, out + "/results", header);
  if (!compressed.empty()) {
    experiments::write_compression(compressed, metrics, out + "/compression", header);
  }
  fmt::print(
      "\nwrote {0}/results.json, {0}/results.csv{1}; took {2:.1f} minutes{3}\n", out,
      compressed.empty() ? "" : fmt::format(", {0}/compression.json and {0}/compression.csv", out),
      minutes, experiments::describe_reused(journal, minutes));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return experiments::guarded(run, argc, argv);
}
