#pragma once

// The language demo's pruning sweep: for each criterion and each number of experts pruned per MoE
// layer, bits per byte on the task language's test split right after pruning and after a short
// post-pruning fine-tune (the random criterion over several seeds). Lower is better.
#include "lm_task.h"

#include <chrono>
#include <optional>

namespace experiments {

struct LMSweepCell {
  std::string criterion;
  int64_t pruned = 0;
  uint64_t seed = 0;
  double bpb = 0, bpb_finetuned = -1;
  std::map<int64_t, std::vector<int64_t>> pruned_experts;  // decoder layer -> experts
};

inline void to_json(nlohmann::json& j, const LMSweepCell& c) {
  nlohmann::json pruned = nlohmann::json::object();
  for (const auto& [layer, experts] : c.pruned_experts) pruned[std::to_string(layer)] = experts;
  j = {{"criterion", c.criterion},
       {"pruned_per_layer", c.pruned},
       {"seed", c.seed},
       {"bits_per_byte", c.bpb},
       {"bits_per_byte_finetuned", c.bpb_finetuned},
       {"pruned_experts", pruned}};
}

inline void from_json(const nlohmann::json& j, LMSweepCell& c) {
  j.at("criterion").get_to(c.criterion);
  j.at("pruned_per_layer").get_to(c.pruned);
  j.at("seed").get_to(c.seed);
  j.at("bits_per_byte").get_to(c.bpb);
  j.at("bits_per_byte_finetuned").get_to(c.bpb_finetuned);
  c.pruned_experts.clear();
  for (const auto& [layer, experts] : j.at("pruned_experts").items()) {
    c.pruned_experts[std::stoll(layer)] = experts.get<std::vector<int64_t>>();
  }
}

struct LMSweepConfig {
  std::string pretrained, finetuned;  // checkpoint folders
  std::vector<std::string> criteria;
  std::vector<int64_t> counts;  // experts pruned per MoE layer
  int64_t seeds = 3;            // random's seeds
  int64_t calibration_windows = 32, context = 256;
  /// Remove the pruned experts' router rows, so tokens choose their top-k among the experts left
  /// and renormalise over them (Mixtral's routing after Expert Drop, REAP and `moeprune prune
  /// --router cut`); false keeps the rows (Chowdhury et al.'s V-MoE semantics: a slot routed to
  /// a pruned expert contributes nothing).
  bool drop_router_rows = true;
  /// The post-pruning fine-tune (steps 0: none); its seed is the run's.
  moeprune::LMTrainerOptions post;
};

/// The sweep's runs: n = 0 (the unpruned model) once, every other count per criterion and seed.
inline int64_t lm_sweep_runs(const LMSweepConfig& cfg) {
  int64_t total = 0;
  bool zero = false;
  for (const auto n : cfg.counts) {
    if (n == 0) {
      zero = true;
      continue;
    }
    for (const auto& c : cfg.criteria) total += c == "random" ? cfg.seeds : 1;
  }
  return total + (zero ? 1 : 0);
}

/// Prunes a fresh copy of the fine-tuned model with `plan` (none: unpruned), measures it, fine-
/// tunes it and measures it again.
inline LMSweepCell lm_sweep_run(const LMSweepConfig& cfg, const LMTask& task,
                                const moeprune::pruning::PruningPlan* plan, uint64_t seed) {
  auto model = moeprune::lm::load_causal_lm(cfg.finetuned);
  LMSweepCell cell;
  cell.seed = seed;
  if (plan != nullptr) {
    moeprune::pruning::apply_plan(*moeprune::lm::moe_view(model), *plan, cfg.drop_router_rows);
    for (const auto& layer : plan->layers) cell.pruned_experts[layer.key] = layer.pruned;
  }
  cell.bpb = bits_per_byte(model, task.test, cfg.context);
  if (cfg.post.steps() > 0) {
    auto post = cfg.post;
    post.seed(seed).progress(false);
    moeprune::train_lm(model, task.train, {}, post);
    cell.bpb_finetuned = bits_per_byte(model, task.test, cfg.context);
  }
  return cell;
}

inline std::vector<LMSweepCell> run_lm_sweep(const LMSweepConfig& cfg, const LMTask& task,
                                             moeprune::ProgressBar& bar, int64_t& done,
                                             RunJournal* journal) {
  namespace pr = moeprune::pruning;
  const auto registry = pr::CriterionRegistry::with_builtins();
  const auto calibration = lm_calibration(task.train, cfg.calibration_windows, cfg.context);
  const auto pre = moeprune::lm::load_causal_lm(cfg.pretrained);
  std::vector<LMSweepCell> cells;
  const auto run = [&](const std::string& key, const std::string& label,
                       const std::function<LMSweepCell()>& make) {
    if (const auto found = journal != nullptr ? journal->find(key) : std::nullopt) {
      bar.skip(1);
      auto cell = found->get<LMSweepCell>();
      bar.update(++done, fmt::format("{}: {:.4f} bits/byte (from the journal)", label, cell.bpb));
      return cell;
    }
    const auto started = std::chrono::steady_clock::now();
    auto cell = make();
    if (journal != nullptr) {
      journal->record(
          key, cell,
          std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    }
    bar.update(++done,
               fmt::format("{}: {:.4f} -> {:.4f} bits/byte", label, cell.bpb, cell.bpb_finetuned));
    return cell;
  };
  std::optional<LMSweepCell> unpruned;
  for (const auto& name : cfg.criteria) {
    const auto criterion = registry.create(name);
    const auto seeds = static_cast<uint64_t>(name == "random" ? cfg.seeds : 1);
    for (uint64_t seed = 0; seed < seeds; ++seed) {
      std::optional<pr::ExpertScores> scores;
      for (const auto n : cfg.counts) {
        if (n == 0) {
          // Pruning nothing is the same model for every criterion: run once, listed for each.
          if (!unpruned) {
            unpruned = run(sweep_key("lm", "none", 0, 0), "unpruned",
                           [&] { return lm_sweep_run(cfg, task, nullptr, 0); });
          }
          auto cell = *unpruned;
          cell.criterion = name;
          cell.seed = seed;
          cells.push_back(cell);
          continue;
        }
        auto cell =
            run(sweep_key("lm", name, n, seed), fmt::format("{} n={} seed={}", name, n, seed), [&] {
              if (!scores) {
                pr::CriterionContext ctx;
                ctx.finetuned = moeprune::lm::moe_view(moeprune::lm::load_causal_lm(cfg.finetuned),
                                                       calibration);
                ctx.pretrained = moeprune::lm::moe_view(pre);
                ctx.seed = seed;
                scores = pr::score_experts(*criterion, ctx);
              }
              auto model = moeprune::lm::load_causal_lm(cfg.finetuned);
              const auto plan =
                  pr::PruningPlan::same_count(*scores, *moeprune::lm::moe_view(model), n, {}, name);
              auto c = lm_sweep_run(cfg, task, &plan, seed);
              c.criterion = name;
              c.pruned = n;
              return c;
            });
        cell.criterion = name;
        cells.push_back(cell);
      }
    }
  }
  return cells;
}

/// Bits per byte (after pruning, after fine-tuning) of every run of one cell.
inline std::pair<std::vector<double>, std::vector<double>> lm_cell_values(
    const std::vector<LMSweepCell>& cells, const std::string& criterion, int64_t pruned) {
  std::pair<std::vector<double>, std::vector<double>> out;
  for (const auto& c : cells) {
    if (c.criterion == criterion && c.pruned == pruned) {
      out.first.push_back(c.bpb);
      out.second.push_back(c.bpb_finetuned);
    }
  }
  return out;
}

inline std::string bpb_spread(const std::vector<double>& v) {
  const auto [mean, spread] = mean_and_spread(v);
  return v.size() > 1 ? fmt::format("{:.3f}±{:.3f}", mean, spread) : fmt::format("{:.3f}", mean);
}

inline void print_lm_sweep_table(const std::vector<LMSweepCell>& cells, const LMSweepConfig& cfg,
                                 int64_t num_experts, const std::string& language) {
  fmt::print("\nbits per byte on the {} test split after pruning n of {} experts per MoE layer{}\n",
             language, num_experts,
             cfg.post.steps() > 0
                 ? fmt::format(" / after {} post-pruning fine-tuning steps", cfg.post.steps())
                 : "");
  fmt::print("{:<24}", "criterion");
  for (const auto n : cfg.counts) fmt::print(" {:>22}", fmt::format("n={}", n));
  fmt::print("\n");
  for (const auto& name : cfg.criteria) {
    fmt::print("{:<24}", name);
    for (const auto n : cfg.counts) {
      const auto [a, b] = lm_cell_values(cells, name, n);
      fmt::print(" {:>22}",
                 cfg.post.steps() > 0 ? bpb_spread(a) + " / " + bpb_spread(b) : bpb_spread(a));
    }
    fmt::print("\n");
  }
}

inline void write_lm_sweep(const std::vector<LMSweepCell>& cells, const std::string& prefix,
                           nlohmann::json header) {
  header["results"] = nlohmann::json::array();
  std::string csv =
      "criterion,pruned_per_layer,seed,bits_per_byte,bits_per_byte_finetuned,pruned_experts\n";
  for (const auto& c : cells) {
    header["results"].push_back(c);
    csv += fmt::format("{},{},{},{:.6f},{:.6f},{}\n", c.criterion, c.pruned, c.seed, c.bpb,
                       c.bpb_finetuned, format_pruned(c.pruned_experts));
  }
  write_text(prefix + ".json", header.dump(2) + "\n");
  write_text(prefix + ".csv", csv);
}

/// gnuplot: bits per byte against the fraction of experts pruned, one line per criterion, before
/// and after the post-pruning fine-tune. Returns the PNG's path, "" when gnuplot failed.
inline std::string plot_lm_sweep(const std::vector<LMSweepCell>& cells, const LMSweepConfig& cfg,
                                 int64_t num_experts, const std::string& language,
                                 const std::string& dir) {
  const auto data_path = dir + "/plot_lm.dat";
  std::string data;
  for (const auto& name : cfg.criteria) {
    data += "# " + name + "\n";
    for (const auto n : cfg.counts) {
      const auto [a, b] = lm_cell_values(cells, name, n);
      const auto [ma, sa] = mean_and_spread(a);
      const auto [mb, sb] = mean_and_spread(b);
      data += fmt::format("{} {} {} {} {}\n", static_cast<double>(n) / num_experts, ma, sa, mb, sb);
    }
    data += "\n\n";
  }
  write_text(data_path, data);
  return plot_sweep(dir + "/plot_lm.png",
                    fmt::format("Mixtral-style byte LM fine-tuned on {} fortunes", language),
                    "test bits per byte (lower is better)", "top left", data_path, cfg.criteria,
                    cfg.post.steps(), dir + "/plot_lm.gp");
}

}  // namespace experiments
