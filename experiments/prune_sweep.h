#pragma once

// The pruning sweep shared by vmoe_prune_sweep and the demo: for each criterion and each number
// of experts pruned per MoE layer, test accuracy right after pruning and after a short
// post-pruning fine-tune (the random criterion over several seeds).
#include "run_journal.h"
#include "vision_common.h"

#include <moeprune/io/atomic_write.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <sstream>

namespace experiments {

struct SweepCell {
  std::string model, criterion;
  int64_t pruned = 0;
  uint64_t seed = 0;
  double top1 = 0, top1_finetuned = -1;
  /// MoE block -> the experts this run pruned.
  std::map<int64_t, std::vector<int64_t>> pruned_experts;
};

// JSON for results.json and the run journal.
inline void to_json(nlohmann::json& j, const SweepCell& c) {
  nlohmann::json pruned = nlohmann::json::object();
  for (const auto& [block, experts] : c.pruned_experts) {
    pruned[std::to_string(block)] = experts;
  }
  j = {{"model", c.model},        {"criterion", c.criterion}, {"pruned_per_layer", c.pruned},
       {"seed", c.seed},          {"top1", c.top1},           {"top1_finetuned", c.top1_finetuned},
       {"pruned_experts", pruned}};
}

inline void from_json(const nlohmann::json& j, SweepCell& c) {
  j.at("model").get_to(c.model);
  j.at("criterion").get_to(c.criterion);
  j.at("pruned_per_layer").get_to(c.pruned);
  j.at("seed").get_to(c.seed);
  j.at("top1").get_to(c.top1);
  j.at("top1_finetuned").get_to(c.top1_finetuned);
  c.pruned_experts.clear();
  for (const auto& [block, experts] : j.at("pruned_experts").items()) {
    c.pruned_experts[std::stoll(block)] = experts.get<std::vector<int64_t>>();
  }
}

/// The journal key of one run of the sweep.
inline std::string sweep_key(const std::string& model, const std::string& criterion, int64_t pruned,
                             uint64_t seed) {
  return fmt::format("sweep/{}/{}/n={}/seed={}", model, criterion, pruned, seed);
}

/// "1:0 3 5|3:2 4 6": the pruned experts of each MoE block, for the CSV.
inline std::string format_pruned(const std::map<int64_t, std::vector<int64_t>>& pruned) {
  std::string out;
  for (const auto& [block, experts] : pruned) {
    out += fmt::format("{}{}:{}", out.empty() ? "" : "|", block, fmt::join(experts, " "));
  }
  return out;
}

struct SweepConfig {
  std::string model_name;  // a label for the results
  std::string pretrained, finetuned;
  std::vector<std::string> criteria;
  std::vector<int64_t> counts;
  int64_t post_steps = 100, seeds = 3, calibration = 512;
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

inline moeprune::VisionTransformer load_model(const std::string& path) {
  return moeprune::load_vision_transformer(path);
}

/// Counts of `wanted` that the model's MoE layers allow (every layer keeps its router's minimum).
inline std::vector<int64_t> feasible_counts(const std::string& checkpoint,
                                            const std::vector<int64_t>& wanted) {
  const auto model = load_model(checkpoint);
  std::vector<int64_t> out;
  for (const auto n : wanted) {
    try {
      moeprune::pruning::ExpertScores zeros;
      const auto view = moeprune::moe_view(model);
      for (const auto& entry : view->layers()) {
        zeros[entry.key] = torch::arange(entry.layer->router().num_experts(), torch::kDouble);
      }
      moeprune::pruning::PruningPlan::same_count(zeros, *view, n).validate(*view);
      out.push_back(n);
    } catch (const c10::Error&) {
    }
  }
  return out;
}

/// Runs the sweep of `cfg`. Runs found in `journal` are taken from it; every new run is recorded
/// there as soon as it finishes.
inline std::vector<SweepCell> run_sweep(const SweepConfig& cfg, const Splits& splits,
                                        moeprune::ProgressBar& bar, int64_t& done,
                                        RunJournal* journal = nullptr) {
  const auto registry = moeprune::pruning::CriterionRegistry::with_builtins();
  const auto calibration = calibration_set(splits.train, cfg.calibration);
  const auto pre = load_model(cfg.pretrained);
  std::vector<SweepCell> cells;
  const auto recorded = [&](const std::string& name, int64_t n,
                            uint64_t seed) -> std::optional<SweepCell> {
    if (journal == nullptr) return std::nullopt;
    const auto run = journal->find(sweep_key(cfg.model_name, name, n, seed));
    return run ? std::optional<SweepCell>(run->get<SweepCell>()) : std::nullopt;
  };
  for (const auto& name : cfg.criteria) {
    const auto criterion = registry.create(name);
    for (uint64_t seed = 0; seed < static_cast<uint64_t>(name == "random" ? cfg.seeds : 1);
         ++seed) {
      std::optional<moeprune::pruning::ExpertScores> scores;  // scored when a run needs them
      for (const auto n : cfg.counts) {
        if (const auto cell = recorded(name, n, seed)) {
          cells.push_back(*cell);
          bar.skip(1);
          bar.update(++done, fmt::format("{} {} n={} seed={}: {:.2f}% (from the journal)",
                                         cfg.model_name, name, n, seed, 100 * cell->top1));
          continue;
        }
        const auto started = std::chrono::steady_clock::now();
        if (!scores) {
          moeprune::pruning::CriterionContext ctx;
          ctx.finetuned = moeprune::moe_view(load_model(cfg.finetuned), calibration.data);
          ctx.pretrained = moeprune::moe_view(pre);
          ctx.seed = seed;
          scores = moeprune::pruning::score_experts(*criterion, ctx);
        }
        auto model = load_model(cfg.finetuned);
        const auto view = moeprune::moe_view(model);
        const auto plan = moeprune::pruning::PruningPlan::same_count(*scores, *view, n, {}, name);
        moeprune::pruning::apply_plan(*view, plan);
        SweepCell cell;
        cell.model = cfg.model_name;
        cell.criterion = name;
        cell.pruned = n;
        cell.seed = seed;
        for (const auto& layer : plan.layers) {
          cell.pruned_experts[layer.key] = layer.pruned;
        }
        torch::manual_seed(seed);
        moeprune::Trainer trainer(model,
                                  post_training_options(cfg.post_steps, splits.train).seed(seed));
        cell.top1 = trainer.evaluate(splits.test).top1;
        if (cfg.post_steps > 0) {
          trainer.fit(splits.train);
          cell.top1_finetuned = trainer.evaluate(splits.test).top1;
        }
        cells.push_back(cell);
        if (journal != nullptr) {
          journal->record(
              sweep_key(cfg.model_name, name, n, seed), cell,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
        }
        bar.update(++done, fmt::format("{} {} n={} seed={}: {:.2f}%", cfg.model_name, name, n, seed,
                                       100 * cell.top1));
      }
    }
  }
  return cells;
}

inline int64_t sweep_runs(const SweepConfig& cfg) {
  int64_t total = 0;
  for (const auto& c : cfg.criteria) {
    total += static_cast<int64_t>(cfg.counts.size()) * (c == "random" ? cfg.seeds : 1);
  }
  return total;
}

inline std::pair<double, double> mean_and_spread(const std::vector<double>& v) {
  double mean = 0, var = 0;
  for (const auto x : v) mean += x / static_cast<double>(v.size());
  for (const auto x : v) var += (x - mean) * (x - mean) / static_cast<double>(v.size());
  return {mean, std::sqrt(var)};
}

inline std::string mean_spread(const std::vector<double>& v) {
  const auto [mean, spread] = mean_and_spread(v);
  return v.size() > 1 ? fmt::format("{:.2f}±{:.2f}", 100 * mean, 100 * spread)
                      : fmt::format("{:.2f}", 100 * mean);
}

/// The accuracies (after pruning, after fine-tuning) of every run of one cell of the sweep.
inline std::pair<std::vector<double>, std::vector<double>> cell_accuracies(
    const std::vector<SweepCell>& cells, const std::string& model, const std::string& criterion,
    int64_t pruned) {
  std::pair<std::vector<double>, std::vector<double>> out;
  for (const auto& c : cells) {
    if (c.model == model && c.criterion == criterion && c.pruned == pruned) {
      out.first.push_back(c.top1);
      out.second.push_back(c.top1_finetuned);
    }
  }
  return out;
}

/// The table: a row per criterion, a column per count, "after pruning / after fine-tuning".
inline void print_sweep_table(const std::vector<SweepCell>& cells, const SweepConfig& cfg,
                              int64_t num_experts) {
  fmt::print("\n{}: test top-1 (%) after pruning n of {} experts per MoE layer{}\n", cfg.model_name,
             num_experts,
             cfg.post_steps > 0
                 ? fmt::format(" / after {} post-pruning fine-tuning steps", cfg.post_steps)
                 : "");
  fmt::print("{:<24}", "criterion");
  for (const auto n : cfg.counts) fmt::print(" {:>24}", fmt::format("n={}", n));
  fmt::print("\n");
  for (const auto& name : cfg.criteria) {
    fmt::print("{:<24}", name);
    for (const auto n : cfg.counts) {
      const auto [a, b] = cell_accuracies(cells, cfg.model_name, name, n);
      fmt::print(" {:>24}",
                 cfg.post_steps > 0 ? mean_spread(a) + " / " + mean_spread(b) : mean_spread(a));
    }
    fmt::print("\n");
  }
}

inline void write_text(const std::string& path, const std::string& text) {
  moeprune::io::write_file_atomically(path, text);
}

/// gnuplot script for a sweep plot: two panels (without and after post-pruning fine-tuning) of
/// the metric in columns 2 and 4 (spreads in 3 and 5) of `data_path` against column 1, one
/// line per criterion (one data block each, in order). Writes SCRIPT and runs gnuplot; returns
/// the PNG's path, or "" when gnuplot failed.
inline std::string plot_sweep(const std::string& png, const std::string& title,
                              const std::string& ylabel, const std::string& key,
                              const std::string& data_path,
                              const std::vector<std::string>& criteria, int64_t post_steps,
                              const std::string& script_path) {
  std::string script = fmt::format(
      "set terminal pngcairo size 1200,480 font ',10' noenhanced\nset output '{}'\n"
      "set multiplot layout 1,2 title '{}'\n"
      "set xlabel 'fraction of experts pruned per MoE layer'\nset ylabel '{}'\n"
      "set key {}\nset grid\n",
      png, title, ylabel, key);
  for (const auto& [column, panel] :
       {std::pair{2, std::string("without post-pruning fine-tuning")},
        std::pair{4, fmt::format("after {} fine-tuning steps", post_steps)}}) {
    script += fmt::format("set title '{}'\nplot ", panel);
    for (size_t i = 0; i < criteria.size(); ++i) {
      script += fmt::format("{}'{}' index {} using 1:{}:{} with yerrorlines title '{}'",
                            i ? ", " : "", data_path, i, column, column + 1, criteria[i]);
    }
    script += "\n";
  }
  script += "unset multiplot\n";
  write_text(script_path, script);
  return std::system(("gnuplot '" + script_path + "' 2>/dev/null").c_str()) == 0 ? png : "";
}

inline void write_sweep(const std::vector<SweepCell>& cells, const std::string& prefix,
                        nlohmann::json header) {
  header["results"] = nlohmann::json::array();
  std::string csv = "model,criterion,pruned_per_layer,seed,top1,top1_finetuned,pruned_experts\n";
  for (const auto& c : cells) {
    header["results"].push_back(c);
    csv += fmt::format("{},{},{},{},{:.6f},{:.6f},{}\n", c.model, c.criterion, c.pruned, c.seed,
                       c.top1, c.top1_finetuned, format_pruned(c.pruned_experts));
  }
  write_text(prefix + ".json", header.dump(2) + "\n");
  write_text(prefix + ".csv", csv);
}

}  // namespace experiments
