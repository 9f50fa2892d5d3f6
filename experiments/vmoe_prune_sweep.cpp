// Sweeps pruning criteria and pruning ratios on a fine-tuned vision MoE: for each criterion and
// each number of experts pruned per MoE layer, the test accuracy right after pruning and after a
// short post-pruning fine-tune (random: mean and spread over seeds). Prints a table and writes
// JSON and CSV.
#include "report.h"
#include "vision_task.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"Sweeps pruning criteria and ratios on a fine-tuned vision MoE checkpoint."};
  experiments::VisionTaskConfig cfg;
  experiments::SweepConfig sweep;
  std::string criteria_text, prune_text = "0,2,4,6", out = "sweep";
  int64_t threads = 0;
  const auto registry = moeprune::pruning::CriterionRegistry::with_builtins();
  app.add_option("--pretrained", cfg.pretrained, "Pre-trained checkpoint")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--finetuned", cfg.finetuned, "Fine-tuned checkpoint")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--criteria", criteria_text, "Comma-separated criteria (default: all)");
  app.add_option("--prune", prune_text, "Experts pruned per MoE layer, comma-separated")
      ->capture_default_str();
  app.add_option("--post-steps", cfg.post_steps, "Post-pruning fine-tuning steps (0: none)")
      ->capture_default_str();
  app.add_option("--seeds", sweep.seeds, "Seeds for the random criterion")->capture_default_str();
  app.add_option("--calibration-images", cfg.calibration, "Training images for data criteria")
      ->capture_default_str();
  app.add_option("--threads", threads, "Torch threads (0: torch's default)");
  std::string data_dir;
  app.add_option("--data-dir", data_dir,
                 "Folder of the data files (default: Debian's Fashion-MNIST; CIFAR checkpoints "
                 "need the cifar-10-batches-bin folder)");
  app.add_option("--out", out,
                 "Output prefix: writes OUT.json and OUT.csv, and OUT.runs.jsonl as runs finish "
                 "(an interrupted sweep resumes from it)")
      ->capture_default_str();
  bool fresh = false;
  app.add_flag("--fresh", fresh, "Ignore OUT.runs.jsonl (moved to .old) and run every run again");
  CLI11_PARSE(app, argc, argv);

  experiments::set_up_process(threads);
  sweep.criteria = experiments::parse_criteria(registry, criteria_text);
  sweep.counts = moeprune::data::parse_label_mapping(prune_text);
  const auto meta = experiments::read_metadata(cfg.finetuned);
  cfg.model_name = meta.options.moe_preset();
  experiments::DataArgs data;
  data.data = meta.data;
  data.dir = data_dir;
  const experiments::VisionClassification task(cfg, experiments::load_splits(data, meta.labels));
  // What the runs depend on besides their own key (criterion, count, seed).
  const nlohmann::json settings = {{"pretrained", experiments::file_fingerprint(cfg.pretrained)},
                                   {"finetuned", experiments::file_fingerprint(cfg.finetuned)},
                                   {"post_steps", cfg.post_steps},
                                   {"calibration", cfg.calibration},
                                   {"data_dir", data_dir}};
  auto journal = experiments::open_run_journal(out + ".runs.jsonl", settings, fresh);
  const auto start = std::chrono::steady_clock::now();
  moeprune::ProgressBar bar(experiments::sweep_runs(sweep), "sweep", "runs");
  int64_t done = 0;
  const auto cells = experiments::run_sweep(task, sweep, bar, done, &journal);
  bar.finish();
  experiments::print_sweep_table(cells, task, sweep);
  experiments::write_sweep(cells, task.metrics(), out,
                           {{"pretrained", cfg.pretrained},
                            {"finetuned", cfg.finetuned},
                            {"post_steps", cfg.post_steps},
                            {"num_experts", meta.options.num_experts()}});
  const double minutes =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 60.0;
  fmt::print("wrote {0}.json and {0}.csv; took {1:.1f} minutes{2}\n", out, minutes,
             experiments::describe_reused(journal, minutes));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return experiments::guarded(run, argc, argv);
}
