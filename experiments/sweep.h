#pragma once

// The pruning sweep, for any task (experiment_task.h): for each criterion and each number of
// experts pruned per MoE layer, the task's quality metric right after pruning and after its
// post-pruning fine-tune (the random criterion over several seeds). Finished runs are recorded in
// a journal as they end, so an interrupted sweep resumes.
#include "experiment_task.h"
#include "run_journal.h"

#include <moeprune/pruning/criterion.h>
#include <moeprune/pruning/pruning_plan.h>
#include <moeprune/train/progress_bar.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <sstream>

namespace experiments {

struct SweepConfig {
  std::vector<std::string> criteria;
  std::vector<int64_t> counts;  // experts pruned per MoE layer
  int64_t seeds = 3;            // the random criterion's
  /// Pruning nothing is the same model for every criterion and seed: run it once and list it
  /// for each (the language demo), or once per criterion and seed, whose post-pruning fine-tunes
  /// then differ by seed (the vision demo, as it always ran).
  bool unpruned_once = false;
  int64_t seeds_of(const std::string& criterion) const { return criterion == "random" ? seeds : 1; }
};

/// The criteria named in `text` (comma-separated), or, when it is empty, the seven the demos'
/// documented results compare (ean and naee, added later, run when named: naee's reconstruction
/// needs dropless routing, which V-MoE's capacity is not).
inline std::vector<std::string> parse_criteria(const moeprune::pruning::CriterionRegistry& registry,
                                               const std::string& text) {
  if (text.empty()) {
    std::vector<std::string> out;
    for (const char* name : {"frequency", "importance", "neuron_magnitude_change", "random", "reap",
                             "router_magnitude", "router_norm_change"}) {
      if (registry.contains(name)) out.push_back(name);
    }
    return out;
  }
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string c; std::getline(in, c, ',');) {
    TORCH_CHECK(registry.contains(c), "unknown criterion '", c,
                "'; known: ", fmt::format("{}", fmt::join(registry.names(), ", ")));
    out.push_back(c);
  }
  return out;
}

/// The journal key of one run of the sweep.
inline std::string sweep_key(const std::string& model, const std::string& criterion, int64_t pruned,
                             uint64_t seed) {
  return fmt::format("sweep/{}/{}/n={}/seed={}", model, criterion, pruned, seed);
}

/// Runs the sweep makes (for a progress bar's total).
inline int64_t sweep_runs(const SweepConfig& cfg) {
  int64_t total = 0;
  bool unpruned = false;
  for (const auto n : cfg.counts) {
    if (n == 0 && cfg.unpruned_once) {
      unpruned = true;
      continue;
    }
    for (const auto& c : cfg.criteria) total += cfg.seeds_of(c);
  }
  return total + (unpruned ? 1 : 0);
}

/// "80.97% -> 81.00%": a run's quality after pruning and after the fine-tune, for progress lines.
inline std::string describe_quality(const Cell& cell, const TaskMetrics& metrics) {
  const auto& q = metrics.quality;
  const auto after = q.finetuned();
  const auto shown = [&](const MetricInfo& m) {
    return cell.has(m.name) ? q.format(cell.value(m.name)) + q.suffix : std::string("-");
  };
  return cell.has(after.name) ? shown(q) + " -> " + shown(after) : shown(q);
}

/// The metrics every run of `task` reports: the quality, and after the fine-tune when it runs.
inline std::vector<std::string> quality_metrics(const ExperimentTask& task) {
  std::vector<std::string> out = {task.metrics().quality.name};
  if (task.post_steps() > 0) out.push_back(task.metrics().quality.finetuned().name);
  return out;
}

namespace detail {

/// A run of `journal` under `key`, or `make()` run, recorded and reported. A recorded run that
/// lacks one of the `required` metrics (a line from an older or a broken writer) is run again.
inline Cell journaled(RunJournal* journal, const std::string& key, const std::string& label,
                      const ExperimentTask& task, const std::vector<std::string>& required,
                      moeprune::ProgressBar* bar, int64_t* done,
                      const std::function<Cell()>& make) {
  const auto& metrics = task.metrics();
  if (const auto found = journal != nullptr ? journal->peek(key) : std::nullopt) {
    auto cell = read_cell(*found, metrics);
    if (cell.model.empty()) cell.model = task.name();  // the key named it
    const auto missing = std::find_if(required.begin(), required.end(),
                                      [&](const std::string& m) { return !cell.has(m); });
    if (missing == required.end()) {
      journal->find(key);  // counted as reused
      if (bar != nullptr && done != nullptr) {
        bar->skip(1);
        bar->update(++*done, fmt::format("{}: {} (from the journal)", label,
                                         describe_quality(cell, metrics)));
      }
      return cell;
    }
    fmt::print("      {}: the journal's run has no {}; running it again\n", key, *missing);
  }
  const auto started = std::chrono::steady_clock::now();
  auto cell = make();
  if (journal != nullptr) {
    journal->record(
        key, cell,
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  }
  if (bar != nullptr && done != nullptr) {
    bar->update(++*done, fmt::format("{}: {}", label, describe_quality(cell, metrics)));
  }
  return cell;
}

}  // namespace detail

/// Prunes a fresh copy of the fine-tuned model (`plan` null: nothing), measures it, fine-tunes it
/// with `seed` and measures it again.
inline Cell measure_pruned(
    const ExperimentTask& task,
    const std::function<moeprune::pruning::PruningPlan(const moeprune::MoEView&)>& plan_for,
    uint64_t seed) {
  const auto& metrics = task.metrics();
  auto model = task.load_finetuned();
  Cell cell;
  cell.model = task.name();
  cell.seed = seed;
  if (plan_for) {
    const auto view = model->view(false);
    const auto plan = plan_for(*view);
    moeprune::pruning::apply_plan(*view, plan, task.cut_router_rows());
    for (const auto& layer : plan.layers) cell.pruned_experts[layer.key] = layer.pruned;
  }
  torch::manual_seed(seed);
  cell.set(metrics.quality, *model->measure(true, false).quality);
  if (task.post_steps() > 0) {
    Finetune run;
    run.seed = seed;
    model->finetune(run);
    cell.set(metrics.quality.finetuned(), *model->measure(true, false).quality);
  }
  return cell;
}

/// Runs the sweep of `cfg` on `task`. Runs found in `journal` are taken from it; every new run is
/// recorded there as soon as it finishes.
inline std::vector<Cell> run_sweep(const ExperimentTask& task, const SweepConfig& cfg,
                                   moeprune::ProgressBar& bar, int64_t& done,
                                   RunJournal* journal = nullptr) {
  namespace pr = moeprune::pruning;
  const auto registry = pr::CriterionRegistry::with_builtins();
  std::vector<Cell> cells;
  std::optional<Cell> unpruned;
  for (const auto& name : cfg.criteria) {
    const auto criterion = registry.create(name);
    for (uint64_t seed = 0; seed < static_cast<uint64_t>(cfg.seeds_of(name)); ++seed) {
      std::optional<pr::ExpertScores> scores;  // scored when a run needs them
      for (const auto n : cfg.counts) {
        if (n == 0 && cfg.unpruned_once) {
          if (!unpruned) {
            unpruned = detail::journaled(journal, sweep_key(task.name(), "none", 0, 0),
                                         task.name() + " unpruned", task, quality_metrics(task),
                                         &bar, &done, [&] { return measure_pruned(task, {}, 0); });
          }
          auto cell = *unpruned;
          cell.method = name;
          cell.seed = seed;
          cells.push_back(cell);
          continue;
        }
        const auto prune_n = [&] {
          if (!scores) {
            pr::CriterionContext ctx;
            // The view holds the model and its calibration data: it outlives the TaskModel.
            ctx.finetuned = task.load_finetuned()->view(true);
            ctx.pretrained = task.pretrained_view();
            ctx.seed = seed;
            scores = pr::score_experts(*criterion, ctx);
          }
          auto c = measure_pruned(
              task,
              [&](const moeprune::MoEView& view) {
                return pr::PruningPlan::same_count(*scores, view, n, {}, name);
              },
              seed);
          c.pruned = n;
          return c;
        };
        auto cell = detail::journaled(journal, sweep_key(task.name(), name, n, seed),
                                      fmt::format("{} {} n={} seed={}", task.name(), name, n, seed),
                                      task, quality_metrics(task), &bar, &done, prune_n);
        cell.method = name;
        cells.push_back(cell);
      }
    }
  }
  return cells;
}

inline std::pair<double, double> mean_and_spread(const std::vector<double>& v) {
  double mean = 0, var = 0;
  for (const auto x : v) mean += x / static_cast<double>(v.size());
  for (const auto x : v) var += (x - mean) * (x - mean) / static_cast<double>(v.size());
  return {mean, std::sqrt(var)};
}

/// The values of `metric` over every run of one cell of the sweep (a model, criterion and
/// count; the random criterion's seeds), in run order. Runs without it are skipped.
inline std::vector<double> sweep_values(const std::vector<Cell>& cells, const std::string& model,
                                        const std::string& criterion, int64_t pruned,
                                        const std::string& metric) {
  std::vector<double> out;
  for (const auto& c : cells) {
    if (c.model == model && c.method == criterion && c.pruned == pruned && c.has(metric)) {
      out.push_back(c.value(metric));
    }
  }
  return out;
}

}  // namespace experiments
