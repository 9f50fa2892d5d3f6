// The language demo (./scripts/demo --lm): the expert-pruning experiment of Chowdhury et al.
// (ICML 2024) and the compressions of the other seeds on a Mixtral-style MoE language model
// trained on real text. Pre-trains a byte-level model on Debian's fortune cookies in five
// languages (cached), fine-tunes it on one language (cached), then sweeps every pruning criterion
// at 0, 2, 4 and 6 of 8 experts per MoE layer, with and without a short post-pruning fine-tune,
// and compares pruning with M-SMoE, MC-SMoE and Expert/Layer/Block Drop at matched budgets.
// docs/reproduction-lm.md describes the setting and the results.
#include "lm_task.h"
#include "machine_info.h"
#include "program.h"
#include "report.h"

#include <moeprune/io/atomic_write.h>
#include <moeprune/io/fingerprint.h>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <fstream>

namespace {

namespace lm = moeprune::lm;

std::string home_cache() {
  const char* home = std::getenv("HOME");
  return std::string(home ? home : ".") + "/.cache/moeprune/demo";
}

struct Schedule {
  int64_t steps, batch, warmup;
  double lr;
};

// Bump when the training code changes what a schedule produces (the optimizer, the loss, the data
// order): checkpoints cached by older code are then retrained rather than reused. The docs' numbers
// once came from such a cache, and a fresh machine did not reproduce them.
constexpr int kRecipeVersion = 2;

// What a cached checkpoint was trained with: the schedule, the data and, for the fine-tuned one,
// the pre-trained checkpoint it started from. Written beside the weights; a cache whose recipe
// differs from the run's (or has none) is retrained, saying why.
nlohmann::json recipe(const Schedule& s, int64_t context, const torch::Tensor& tokens,
                      const std::string& start = "") {
  const auto ids = tokens.contiguous();
  const auto data = moeprune::io::Fingerprint().add(ids.data_ptr(), ids.nbytes()).hex();
  nlohmann::json r = {{"version", kRecipeVersion},
                      {"steps", s.steps},
                      {"batch", s.batch},
                      {"warmup", s.warmup},
                      {"lr", s.lr},
                      {"context", context},
                      {"data", data}};
  if (!start.empty()) r["start"] = experiments::file_fingerprint(start + "/model.safetensors");
  return r;
}

const char* kRecipeFile = "/moeprune_demo_recipe.json";

// True when `dir` holds a checkpoint trained with `wanted`; otherwise says what differs.
bool reusable(const std::string& dir, const nlohmann::json& wanted) {
  if (!std::filesystem::exists(dir + "/config.json") ||
      !std::filesystem::exists(dir + "/model.safetensors")) {
    return false;
  }
  std::ifstream in(dir + kRecipeFile);
  nlohmann::json found = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (found == wanted) return true;
  std::string differs;
  for (const auto& [key, value] : wanted.items()) {
    if (!found.is_object() || !found.contains(key) || found[key] != value) {
      differs += fmt::format("{}{} {} (cached: {})", differs.empty() ? "" : ", ", key, value.dump(),
                             found.is_object() && found.contains(key) ? found[key].dump() : "none");
    }
  }
  fmt::print("      the cached {} was trained otherwise ({}): retraining\n", dir, differs);
  return false;
}

moeprune::LMTrainerOptions trainer(const Schedule& s, int64_t context) {
  return moeprune::LMTrainerOptions()
      .steps(s.steps)
      .batch_size(s.batch)
      .context(context)
      .lr(s.lr)
      .warmup_steps(s.warmup)
      .weight_decay(0.01);
}

void pretrain(const experiments::FortuneTexts& task, const std::string& dir, const Schedule& s,
              int64_t context, bool fresh) {
  const auto wanted = recipe(s, context, task.pretrain);
  if (!fresh && reusable(dir, wanted)) {
    fmt::print("[1/4] pre-trained model: reusing {} (--fresh retrains)\n", dir);
    return;
  }
  fmt::print("[1/4] pre-training on every language: {} steps of {} windows of {} bytes\n", s.steps,
             s.batch, context);
  std::fflush(stdout);
  torch::manual_seed(0);
  lm::CausalLM model(experiments::lm_demo_options());
  const auto r = moeprune::train_lm(model, task.pretrain, {}, trainer(s, context));
  fmt::print("      {:.1f} minutes, {:.0f} tokens/s\n", r.seconds / 60, r.tokens_per_second);
  lm::save_causal_lm(model, dir, lm::SaveOptions().overwrite(true));
  moeprune::io::write_file_atomically(dir + kRecipeFile, wanted.dump(1) + "\n");
}

void finetune(const experiments::FortuneTexts& task, const std::string& pretrained,
              const std::string& dir, const Schedule& s, int64_t context, bool fresh) {
  const auto wanted = recipe(s, context, task.train, pretrained);
  if (!fresh && reusable(dir, wanted)) {
    fmt::print("[2/4] fine-tuned model: reusing {}\n", dir);
    return;
  }
  fmt::print("[2/4] fine-tuning on {} only: {} steps of {} windows\n", task.language_name, s.steps,
             s.batch);
  std::fflush(stdout);
  torch::manual_seed(0);
  auto model = lm::load_causal_lm(pretrained);
  moeprune::train_lm(model, task.train, {}, trainer(s, context));
  lm::save_causal_lm(model, dir, lm::SaveOptions().overwrite(true));
  moeprune::io::write_file_atomically(dir + kRecipeFile, wanted.dump(1) + "\n");
}

int run(int argc, char** argv) {
  CLI::App app{
      "moeprune language demo: pre-train a small Mixtral-style MoE on fortune cookies in five "
      "languages, fine-tune it on one, compare expert-pruning criteria at 0/2/4/6 of 8 experts "
      "per layer, and compare pruning with merging, MC-SMoE and Expert/Layer/Block Drop."};
  bool fresh = false, no_compression = false, checkpoints_only = false;
  std::string cache = home_cache(), out = "demo-results-lm", criteria, language = "es";
  int64_t threads = 0, context = 256;
  Schedule pre{560, 16, 50, 2e-3}, fine{150, 16, 15, 1e-3}, post{25, 8, 3, 3e-4};
  std::string router = "cut";
  app.add_option("--language", language, "The downstream language: en, de, es, it or pt")
      ->check(CLI::IsMember({"en", "de", "es", "it", "pt"}))
      ->capture_default_str();
  app.add_flag("--fresh", fresh, "Retrain instead of reusing the cached checkpoints");
  app.add_flag("--checkpoints-only", checkpoints_only,
               "Pre-train and fine-tune (or reuse the cache), print their bits per byte, and stop: "
               "the cache then holds the two Hugging Face Mixtral folders");
  app.add_flag("--no-compression", no_compression,
               "Skip the comparison with merging, MC-SMoE and Expert/Layer/Block Drop");
  app.add_option("--cache-dir", cache, "Where the pre-trained and fine-tuned checkpoints are kept")
      ->capture_default_str();
  app.add_option("--out-dir", out, "Where the tables, JSON, CSV and plots go")
      ->capture_default_str();
  app.add_option("--pretrain-steps", pre.steps, "Pre-training steps")->capture_default_str();
  app.add_option("--finetune-steps", fine.steps, "Fine-tuning steps")->capture_default_str();
  app.add_option("--post-steps", post.steps, "Post-pruning fine-tuning steps (0: none)")
      ->capture_default_str();
  app.add_option("--router", router,
                 "cut: pruned experts' router rows removed, tokens pick their top-2 among the "
                 "experts left (Mixtral after Expert Drop, REAP); keep: rows kept, a slot routed "
                 "to a pruned expert gives nothing (the paper's V-MoE semantics)")
      ->check(CLI::IsMember({"cut", "keep"}))
      ->capture_default_str();
  app.add_option("--criteria", criteria,
                 "Only these criteria, comma-separated (default: the seven of the documented "
                 "results; ean and naee run when named)");
  app.add_option("--threads", threads, "Torch threads (0: torch's default)");
  CLI11_PARSE(app, argc, argv);

  const auto criteria_names =
      experiments::parse_criteria(moeprune::pruning::CriterionRegistry::with_builtins(), criteria);
  const auto start = std::chrono::steady_clock::now();
  experiments::set_up_process(threads);
  std::filesystem::create_directories(cache);
  std::filesystem::create_directories(out);
  const auto task = experiments::load_fortune_texts(language);
  fmt::print("fortunes (training splits): {}\n", fmt::join(task.summary, ", "));
  fmt::print("task: {}, {} / {} / {} training / validation / test tokens\n", task.language_name,
             task.train.size(0), task.validation.size(0), task.test.size(0));

  const auto pretrained = cache + "/lm_pretrained_mixtral";
  const auto finetuned = cache + "/lm_finetuned_mixtral_" + language;
  pretrain(task, pretrained, pre, context, fresh);
  finetune(task, pretrained, finetuned, fine, context, fresh);
  double bpb_pretrained = 0, bpb_finetuned = 0;
  {
    auto p = lm::load_causal_lm(pretrained);
    auto f = lm::load_causal_lm(finetuned);
    bpb_pretrained = experiments::bits_per_byte(p, task.test, context);
    bpb_finetuned = experiments::bits_per_byte(f, task.test, context);
    fmt::print("      {} test bits per byte: pre-trained {:.4f}, fine-tuned {:.4f}\n",
               task.language_name, bpb_pretrained, bpb_finetuned);
  }
  if (checkpoints_only) {
    fmt::print("checkpoints: {} and {}\n", pretrained, finetuned);
    return 0;
  }

  experiments::LMTaskConfig cfg;
  cfg.pretrained = pretrained;
  cfg.finetuned = finetuned;
  cfg.context = context;
  cfg.post = trainer(post, context);
  cfg.cut_router_rows = router == "cut";
  const experiments::CausalLanguageModeling lm_task(cfg, task);
  const int64_t experts = lm_task.shape().experts;
  experiments::SweepConfig sweep;
  sweep.criteria = criteria_names;
  for (int64_t n = 0; n < experts; n += 2) sweep.counts.push_back(n);
  sweep.unpruned_once = true;

  // Finished runs go to a journal as they end, so an interrupted run resumes where it stopped.
  const nlohmann::json settings = {
      {"language", language},
      {"post_steps", post.steps},
      {"post_lr", post.lr},
      {"router", router},
      {"context", context},
      {"checkpoints",
       {experiments::file_fingerprint(pretrained + "/model.safetensors"),
        experiments::file_fingerprint(finetuned + "/model.safetensors")}}};
  auto journal = experiments::open_run_journal(out + "/runs.jsonl", settings, fresh);

  const auto sweep_total = experiments::sweep_runs(sweep);
  fmt::print(
      "[3/4] pruning sweep: {} runs (criteria x experts pruned per layer, random x {} seeds)\n",
      sweep_total, sweep.seeds);
  std::fflush(stdout);
  moeprune::ProgressBar bar(sweep_total, "sweep", "runs");
  int64_t done = 0;
  const auto cells = experiments::run_sweep(lm_task, sweep, bar, done, &journal);
  bar.finish();

  std::vector<experiments::Cell> compressed;
  experiments::CompressionConfig ccfg;
  ccfg.layer_drops = {1, 2};
  ccfg.block_drops = {1, 2};
  ccfg.sweep = cells;
  for (int64_t kept = experts - 2; kept >= 2; kept -= 2) ccfg.budgets.push_back(kept);
  if (!no_compression) {
    const auto total = experiments::compression_runs(ccfg);
    fmt::print(
        "[4/4] compressions compared: {} runs (pruning, Expert Drop, M-SMoE, MC-SMoE at matched "
        "experts per layer; Layer Drop, Block Drop; magnitude, Wanda, SparseGPT inside the "
        "experts at 50% and 2:4, and Expert Drop + Wanda)\n",
        total);
    std::fflush(stdout);
    moeprune::ProgressBar cbar(total, "compression", "runs");
    int64_t cdone = 0;
    compressed = experiments::run_compression(lm_task, ccfg, &cbar, &cdone, &journal);
    cbar.finish();
  } else {
    fmt::print("[4/4] compression comparison skipped\n");
  }

  const double minutes =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 60.0;
  experiments::print_sweep_table(cells, lm_task, sweep);
  const auto png = experiments::plot_sweep(cells, lm_task, sweep, out);
  fmt::print("      {}\n", png.empty() ? "gnuplot failed for the sweep plot" : "plot: " + png);
  if (!compressed.empty()) {
    experiments::print_compression_table(compressed, lm_task);
    const auto cpng = experiments::plot_compression(compressed, lm_task, out);
    fmt::print("      {}\n",
               cpng.empty() ? "gnuplot failed for the compression plot" : "plot: " + cpng);
  }
  const nlohmann::json header = {{"machine", bench::machine_info()},
                                 {"language", task.language_name},
                                 {"bits_per_byte_pretrained", bpb_pretrained},
                                 {"bits_per_byte_finetuned", bpb_finetuned},
                                 {"test_tokens", task.test.size(0)},
                                 {"minutes", minutes},
                                 {"runs_reused_from_journal", journal.reused()},
                                 {"reused_runs_minutes", journal.reused_seconds() / 60.0},
                                 {"post_steps", post.steps},
                                 {"post_lr", post.lr},
                                 {"router", router},
                                 {"pretrain_steps", pre.steps},
                                 {"finetune_steps", fine.steps}};
  experiments::write_sweep(cells, lm_task.metrics(), out + "/results", header);
  if (!compressed.empty()) {
    experiments::write_compression(compressed, lm_task.metrics(), out + "/compression", header);
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
