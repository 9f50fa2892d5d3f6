// Sweeps pruning criteria and pruning ratios on a fine-tuned vision MoE: for each criterion and
// each number of experts pruned per MoE layer, the test accuracy right after pruning and after a
// short post-pruning fine-tune (random: mean and spread over seeds). Prints a table and writes
// JSON and CSV.
#include "vision_common.h"

#include <cmath>
#include <sstream>

namespace {

struct Cell {
  std::string criterion;
  int64_t pruned = 0;
  uint64_t seed = 0;
  double top1 = 0, top1_finetuned = -1;
};

moeprune::VisionTransformer load_model(const std::string& path) {
  moeprune::VisionTransformer m(examples::read_metadata(path).options);
  moeprune::load_checkpoint(path, *m);
  return m;
}

std::string mean_spread(const std::vector<double>& v) {
  double mean = 0, var = 0;
  for (const auto x : v) mean += x / static_cast<double>(v.size());
  for (const auto x : v) var += (x - mean) * (x - mean) / static_cast<double>(v.size());
  return v.size() > 1 ? fmt::format("{:.2f}±{:.2f}", 100 * mean, 100 * std::sqrt(var))
                      : fmt::format("{:.2f}", 100 * mean);
}

int run(int argc, char** argv) {
  CLI::App app{"Sweeps pruning criteria and ratios on a fine-tuned vision MoE checkpoint."};
  std::string pretrained, finetuned, criteria_text, prune_text = "0,2,4,6", out = "sweep";
  int64_t post_steps = 100, seeds = 3, calibration = 512, threads = 0;
  const auto registry = moeprune::pruning::CriterionRegistry::with_builtins();
  app.add_option("--pretrained", pretrained, "Pre-trained checkpoint")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--finetuned", finetuned, "Fine-tuned checkpoint")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--criteria", criteria_text, "Comma-separated criteria (default: all)");
  app.add_option("--prune", prune_text, "Experts pruned per MoE layer, comma-separated")
      ->capture_default_str();
  app.add_option("--post-steps", post_steps, "Post-pruning fine-tuning steps (0: none)")
      ->capture_default_str();
  app.add_option("--seeds", seeds, "Seeds for the random criterion")->capture_default_str();
  app.add_option("--calibration-images", calibration, "Training images for data criteria")
      ->capture_default_str();
  app.add_option("--threads", threads, "Torch threads (0: torch's default)");
  app.add_option("--out", out, "Output prefix: writes OUT.json and OUT.csv")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  examples::keep_freed_memory();
  if (threads > 0) {
    torch::set_num_threads(static_cast<int>(threads));
  }
  std::vector<std::string> criteria = registry.names();
  if (!criteria_text.empty()) {
    criteria.clear();
    std::stringstream in(criteria_text);
    for (std::string c; std::getline(in, c, ',');) {
      TORCH_CHECK(registry.contains(c), "unknown criterion '", c, "'");
      criteria.push_back(c);
    }
  }
  const auto counts = moeprune::data::parse_label_mapping(prune_text);
  const auto meta = examples::read_metadata(finetuned);
  examples::DataArgs data;
  data.data = meta.data;
  const auto splits = examples::load_splits(data, meta.labels);
  const auto mean = examples::channel_mean(splits.train),
             stdev = examples::channel_std(splits.train);
  const auto calib = splits.train.subset(torch::arange(std::min(calibration, splits.train.size())));
  const auto pre = load_model(pretrained);

  int64_t total = 0;
  for (const auto& c : criteria)
    total += static_cast<int64_t>(counts.size()) * (c == "random" ? seeds : 1);
  moeprune::ProgressBar bar(total, "sweep", "runs");
  std::vector<Cell> cells;
  for (const auto& name : criteria) {
    const auto criterion = registry.create(name);
    for (uint64_t seed = 0; seed < static_cast<uint64_t>(name == "random" ? seeds : 1); ++seed) {
      auto scored = load_model(finetuned);
      moeprune::pruning::CriterionContext ctx;
      ctx.finetuned = scored;
      ctx.pretrained = pre;
      ctx.seed = seed;
      ctx.data = [&](const std::function<void(const torch::Tensor&)>& visit) {
        for (int64_t b = 0; b < calib.size(); b += 256) {
          visit(moeprune::data::normalize_batch(
              calib.images.narrow(0, b, std::min<int64_t>(256, calib.size() - b)), mean, stdev));
        }
      };
      const auto scores = moeprune::pruning::score_experts(*criterion, ctx);
      for (const auto n : counts) {
        auto model = load_model(finetuned);
        moeprune::pruning::apply_plan(
            model, moeprune::pruning::PruningPlan::same_count(scores, model, n, {}, name));
        Cell cell{name, n, seed};
        torch::manual_seed(seed);
        moeprune::Trainer trainer(model, moeprune::TrainerOptions()
                                             .epochs(1)
                                             .max_steps(post_steps)
                                             .optimizer(moeprune::OptimizerKind::kSgd)
                                             .lr(0.01)
                                             .weight_decay(0)
                                             .warmup_steps(std::min<int64_t>(post_steps / 10, 100))
                                             .clip_norm(10)
                                             .seed(seed)
                                             .mean(mean)
                                             .std(stdev)
                                             .progress(false));
        cell.top1 = trainer.evaluate(splits.test).top1;
        if (post_steps > 0) {
          trainer.fit(splits.train);
          cell.top1_finetuned = trainer.evaluate(splits.test).top1;
        }
        cells.push_back(cell);
        bar.update(static_cast<int64_t>(cells.size()),
                   fmt::format("{} n={} seed={}: {:.2f}%", name, n, seed, 100 * cell.top1));
      }
    }
  }
  bar.finish();

  // Table: one row per criterion, a column per count; "no fine-tune / fine-tuned".
  fmt::print("\ntest top-1 (%) after pruning n of {} experts per MoE layer{}\n",
             meta.options.num_experts(),
             post_steps > 0 ? fmt::format(", then after {} fine-tuning steps", post_steps) : "");
  fmt::print("{:<24}", "criterion");
  for (const auto n : counts) fmt::print(" {:>24}", fmt::format("n={}", n));
  fmt::print("\n");
  for (const auto& name : criteria) {
    fmt::print("{:<24}", name);
    for (const auto n : counts) {
      std::vector<double> a, b;
      for (const auto& c : cells) {
        if (c.criterion == name && c.pruned == n) {
          a.push_back(c.top1);
          b.push_back(c.top1_finetuned);
        }
      }
      fmt::print(" {:>24}",
                 post_steps > 0 ? mean_spread(a) + " / " + mean_spread(b) : mean_spread(a));
    }
    fmt::print("\n");
  }

  nlohmann::json j = {{"pretrained", pretrained},
                      {"finetuned", finetuned},
                      {"post_steps", post_steps},
                      {"num_experts", meta.options.num_experts()},
                      {"results", nlohmann::json::array()}};
  std::string csv = "criterion,pruned_per_layer,seed,top1,top1_finetuned\n";
  for (const auto& c : cells) {
    j["results"].push_back({{"criterion", c.criterion},
                            {"pruned_per_layer", c.pruned},
                            {"seed", c.seed},
                            {"top1", c.top1},
                            {"top1_finetuned", c.top1_finetuned}});
    csv += fmt::format("{},{},{},{:.6f},{:.6f}\n", c.criterion, c.pruned, c.seed, c.top1,
                       c.top1_finetuned);
  }
  for (const auto& [path, text] :
       {std::pair{out + ".json", j.dump(2) + "\n"}, std::pair{out + ".csv", csv}}) {
    std::ofstream(path + ".tmp") << text;
    std::filesystem::rename(path + ".tmp", path);
  }
  fmt::print("wrote {0}.json and {0}.csv\n", out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return examples::guarded(run, argc, argv);
}
