#pragma once

// The compression comparison, for any task (experiment_task.h): expert pruning against the
// compressions practitioners compare it with (M-SMoE merging, MC-SMoE, Expert Drop, Layer Drop,
// Block Drop) on one fine-tuned model, at matched budgets of experts kept per MoE layer. Every
// row records what the compressed model stores, its FLOPs per example, its measured latency and
// the task's quality metric before and after the same short fine-tune.
#include "latency.h"
#include "sweep.h"

#include <moeprune/compression/expert_drop.h>
#include <moeprune/compression/expert_sparsity.h>
#include <moeprune/compression/low_rank.h>
#include <moeprune/compression/merging.h>
#include <moeprune/pruning/builtin_criteria.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <optional>

namespace experiments {

struct CompressionConfig {
  /// Experts kept per MoE layer, one row per method and budget.
  std::vector<int64_t> budgets;
  /// MC-SMoE: rank of the low-rank part and final density of the sparse part.
  int64_t rank = 8;
  double density = 0.1;
  /// Layer Drop / Block Drop counts.
  std::vector<int64_t> layer_drops = {1}, block_drops = {1, 2};
  /// Expert slimming (compression/expert_sparsity.h): weights pruned inside every expert by each
  /// method at each pattern ("0.5": half of every row; "2:4"), each expert calibrated on the
  /// tokens routed to it; then Expert Drop of `slim_drop` experts per layer followed by
  /// `slim_drop_method` at the first pattern (the Unified seed's combined recipe; 0: not run).
  std::vector<std::string> slimming_methods = {"magnitude", "wanda", "sparsegpt"};
  std::vector<std::string> slimming_patterns = {"0.5", "2:4"};
  int64_t slim_drop = 2;
  std::string slim_drop_method = "wanda";
  /// A sweep run on the same task, if any: the unpruned row and the router-norm-change rows are
  /// the same computation as its runs (seed 0), so their quality is taken from it and only the
  /// costs are measured here.
  std::vector<Cell> sweep;
};

/// M-SMoE's merge as the comparisons run it: `total_groups` groups over all of `view`'s layers
/// (global), experts grouped and merged frequency-weighted. Returns the groups of each layer.
inline std::map<int64_t, int64_t> merge_globally(const moeprune::MoEView& view,
                                                 int64_t total_groups) {
  namespace cm = moeprune::compression;
  const auto usage = cm::collect_expert_usage(view);
  const auto counts = cm::global_group_counts(view, usage, total_groups);
  cm::merge_experts(view, cm::group_experts(view, usage, counts), usage);
  return counts;
}

/// Taken right after factorising `view`'s experts: a function that puts the dense sparse parts
/// back with every unit kept, so the fine-tune starts from them and prunes S gradually as MC-SMoE
/// does, while the no-fine-tune row has pruned S at once.
inline std::function<void()> sparse_part_restorer(std::shared_ptr<const moeprune::MoEView> view) {
  std::vector<std::pair<torch::Tensor, torch::Tensor>> dense;
  for (const auto& entry : view->layers()) {
    for (const auto& [w, mask] : entry.layer->experts()->sparse_parts()) {
      dense.emplace_back(w, w.detach().clone());
    }
  }
  return [view, dense] {
    torch::NoGradGuard no_grad;
    for (const auto& [w, copy] : dense) w.copy_(copy);
    for (const auto& entry : view->layers()) {
      for (const auto& [w, mask] : entry.layer->experts()->sparse_parts()) mask.fill_(1.0);
    }
  };
}

/// MC-SMoE without a fine-tune to prune during: the importance of S from one pass of the task
/// loss over the calibration data (the distillation loss is zero right after factorising, and so
/// is its gradient), then S pruned to `density` at once.
inline void prune_sparse_once(TaskModel& model, const moeprune::MoEView& view, double density) {
  model.module().train();
  model.module().zero_grad();
  moeprune::compression::prune_sparse_once(
      view, [&] { model.calibration_backward(); }, density);
  model.module().zero_grad();
}

namespace detail {

// What a method does to a freshly loaded model before the no-fine-tune measurement, and what its
// fine-tune needs.
struct Prepared {
  std::string detail;
  bool distill = false;  // M-SMoE / MC-SMoE fine-tune with distillation, routers frozen
  std::function<void()> before_finetune;
  std::shared_ptr<moeprune::compression::SparsePruner> pruner;
  /// Expert slimming: the fine-tune keeps the pruned weights at zero (`keep_zeros`), and the
  /// parameters column counts the experts' non-zeros (what a sparse format stores).
  std::function<void()> keep_zeros;
};

// The held expert weights of `view` (w1, w3 when gated, w2 of every MoE layer).
inline std::vector<torch::Tensor> expert_weights(const moeprune::MoEView& view) {
  std::vector<torch::Tensor> out;
  for (const auto& entry : view.layers()) {
    const auto bank = entry.layer->experts();
    for (const auto& w : {bank->w1, bank->w3, bank->w2}) {
      if (w.defined()) out.push_back(w);
    }
  }
  return out;
}

inline int64_t expert_zeros(const moeprune::MoEView& view) {
  int64_t zeros = 0;
  for (const auto& w : expert_weights(view)) zeros += (w == 0).sum().item<int64_t>();
  return zeros;
}

// Sparsifies `view`'s experts and returns what keeps them so through a fine-tune: the weights
// that are zero now are set back to zero after every optimiser step (the gradient and Adam's
// moments would otherwise revive them).
inline std::function<void()> sparsify_and_mask(
    const moeprune::MoEView& view, const moeprune::compression::ExpertSparsityOptions& o) {
  moeprune::compression::sparsify_experts(view, o);
  std::vector<std::pair<torch::Tensor, torch::Tensor>> masks;
  for (const auto& w : expert_weights(view)) masks.emplace_back(w, (w != 0).to(w.scalar_type()));
  return [masks] {
    torch::NoGradGuard no_grad;
    for (const auto& [w, keep] : masks) w.mul_(keep);
  };
}

struct Method {
  std::string method, setting;
  int64_t budget;
  std::function<Prepared(TaskModel&)> apply;
  /// Experts per layer the same run of the sweep (router_norm_change, seed 0) pruned; -1: none.
  int64_t sweep_pruned = -1;
};

inline std::string join(const std::vector<int64_t>& v) {
  return fmt::format("{}", fmt::join(v, ","));
}

// "block 1: 3 groups; block 3: 1 group"
inline std::string describe_groups(const std::map<int64_t, int64_t>& counts,
                                   const std::string& layer) {
  std::string out;
  for (const auto& [index, n] : counts) {
    out += fmt::format("{}{} {}: {} group{}", out.empty() ? "" : "; ", layer, index, n,
                       n == 1 ? "" : "s");
  }
  return out;
}

inline const Cell* find_sweep_run(const std::vector<Cell>& cells, const std::string& model,
                                  int64_t pruned) {
  for (const auto& c : cells) {
    if (c.model == model && c.method == "router_norm_change" && c.pruned == pruned && c.seed == 0) {
      return &c;
    }
  }
  return nullptr;
}

inline std::vector<Method> methods(const ExperimentTask& task, const CompressionConfig& cfg) {
  namespace cm = moeprune::compression;
  namespace pr = moeprune::pruning;
  // The methods outlive this call: they capture values, not the task or `cfg`.
  const auto shape = task.shape();
  const int64_t experts = shape.experts, layers = shape.moe_layers;
  const auto pretrained = task.pretrained_view();
  const bool cut_rows = task.cut_router_rows();
  const int64_t rank = cfg.rank, warmup = std::max<int64_t>(1, task.post_steps() / 10);
  const double density = cfg.density;
  std::vector<Method> out;
  out.push_back(
      {"fine-tuned", "no compression", experts, [](TaskModel&) { return Prepared{}; }, 0});
  for (const int64_t kept : cfg.budgets) {
    const auto setting = fmt::format("{} of {} experts", kept, experts);
    out.push_back({"prune (router_norm_change)", setting, kept,
                   [pretrained, cut_rows, experts, kept](TaskModel& m) {
                     const auto view = m.view(false);
                     const auto scores =
                         pr::score_experts(pr::RouterNormChange(), *view, pretrained.get());
                     pr::apply_plan(*view,
                                    pr::PruningPlan::same_count(scores, *view, experts - kept, {},
                                                                "router_norm_change"),
                                    cut_rows);
                     return Prepared{};
                   },
                   experts - kept});
    out.push_back({"Expert Drop", setting, kept, [experts, kept](TaskModel& m) {
                     cm::expert_drop(*m.view(true),
                                     cm::ExpertDropOptions().per_layer(experts - kept));
                     return Prepared{};
                   }});
    out.push_back({"M-SMoE", fmt::format("{} groups per layer (global)", kept), kept,
                   [layers, kept, shape](TaskModel& m) {
                     Prepared p;
                     p.distill = true;
                     p.detail =
                         describe_groups(merge_globally(*m.view(true), kept * layers), shape.layer);
                     return p;
                   }});
    out.push_back(
        {"MC-SMoE",
         fmt::format("{} groups, rank {}, S {:.0f}% dense", kept, cfg.rank, 100 * cfg.density),
         kept, [rank, density, warmup, layers, kept, shape](TaskModel& m) {
           const auto view = m.view(true);
           Prepared p;
           p.distill = true;
           p.detail = describe_groups(merge_globally(*view, kept * layers), shape.layer);
           cm::factorize_experts(*view, rank);
           p.before_finetune = sparse_part_restorer(view);
           prune_sparse_once(m, *view, density);
           p.pruner = std::make_shared<cm::SparsePruner>(
               *view, cm::SparsePruningOptions().final_density(density).warmup_steps(warmup));
           return p;
         }});
  }
  const auto slimming = [](const std::string& method, const std::string& pattern) {
    return cm::ExpertSparsityOptions()
        .method(cm::parse_sparsity_method(method))
        .pattern(cm::SparsityPattern::parse(pattern));
  };
  const auto method_label = [](cm::SparsityMethod m) {
    return m == cm::SparsityMethod::kWanda       ? std::string("Wanda")
           : m == cm::SparsityMethod::kSparseGPT ? std::string("SparseGPT")
                                                 : std::string("magnitude");
  };
  const auto pattern_label = [](const std::string& pattern) {
    return pattern.find(':') != std::string::npos
               ? pattern
               : fmt::format("{:.0f}% of every row", 100 * std::stod(pattern));
  };
  for (const auto& method : cfg.slimming_methods) {
    for (const auto& pattern : cfg.slimming_patterns) {
      const auto o = slimming(method, pattern);
      out.push_back({method_label(o.method()) + " (inside experts)", pattern_label(pattern),
                     experts, [o](TaskModel& m) {
                       Prepared p;
                       p.keep_zeros = sparsify_and_mask(*m.view(true), o);
                       return p;
                     }});
    }
  }
  if (cfg.slim_drop > 0 && !cfg.slimming_patterns.empty()) {
    const auto o = slimming(cfg.slim_drop_method, cfg.slimming_patterns.front());
    const int64_t drop = cfg.slim_drop;
    out.push_back({"Expert Drop + " + method_label(o.method()),
                   fmt::format("{} of {} experts, {}", experts - drop, experts,
                               pattern_label(cfg.slimming_patterns.front())),
                   experts - drop, [o, drop](TaskModel& m) {
                     const auto view = m.view(true);
                     cm::expert_drop(*view, cm::ExpertDropOptions().per_layer(drop));
                     Prepared p;
                     p.keep_zeros = sparsify_and_mask(*view, o);
                     return p;
                   }});
  }
  for (const int64_t n : cfg.layer_drops) {
    out.push_back({"Layer Drop", fmt::format("{} of {} MoE layers", n, layers),
                   experts * (layers - n) / layers, [n, shape](TaskModel& m) {
                     Prepared p;
                     p.detail = shape.layer + "s " + join(m.layer_drop(n));
                     return p;
                   }});
  }
  for (const int64_t n : cfg.block_drops) {
    out.push_back({"Block Drop", fmt::format("{} of {} {}", n, shape.depth, shape.layers), 0,
                   [n, shape](TaskModel& m) {
                     Prepared p;
                     p.detail = shape.layer + "s " + join(m.block_drop(n));
                     return p;
                   }});
  }
  return out;
}

}  // namespace detail

/// Rows run_compression makes for `cfg` (for a progress bar's total).
inline int64_t compression_runs(const CompressionConfig& cfg) {
  const bool combined = cfg.slim_drop > 0 && !cfg.slimming_patterns.empty();
  return 1 + 4 * static_cast<int64_t>(cfg.budgets.size()) +
         static_cast<int64_t>(cfg.layer_drops.size() + cfg.block_drops.size() +
                              cfg.slimming_methods.size() * cfg.slimming_patterns.size()) +
         (combined ? 1 : 0);
}

/// Compresses a fresh copy of the fine-tuned model with `method` and measures it before and after
/// the fine-tune (whose quality `same`, a sweep run of the same computation, gives when set).
inline Cell measure_compressed(const ExperimentTask& task, const detail::Method& method,
                               const Cell* same) {
  const auto& metrics = task.metrics();
  auto model = task.load_finetuned();
  torch::manual_seed(0);
  auto prepared = method.apply(*model);
  Cell cell;
  cell.model = task.name();
  cell.method = method.method;
  cell.setting = method.setting;
  cell.budget = method.budget;
  cell.detail = prepared.detail;
  // Slimmed experts store their non-zeros (in a sparse format; dense, the zeros take space too).
  const auto stored = [&] {
    const auto n = model->stored_parameters();
    return static_cast<double>(prepared.keep_zeros ? n - detail::expert_zeros(*model->view(false))
                                                   : n);
  };
  cell.set(metrics.parameters, stored());
  const auto before = model->measure(same == nullptr, true);
  cell.set(metrics.flops, *before.flops);
  cell.set(metrics.latency, model->latency_ms());
  if (same != nullptr) {
    for (const auto& name : {metrics.quality.name, metrics.quality.finetuned().name}) {
      if (same->has(name)) cell.metrics[name] = same->metrics.at(name);
    }
    cell.detail = metrics.quality.label + ": the sweep's run";
    return cell;
  }
  cell.set(metrics.quality, *before.quality);
  if (task.post_steps() > 0) {
    if (prepared.before_finetune) prepared.before_finetune();
    Finetune run;
    run.distill = prepared.distill;
    if (prepared.pruner) {
      auto pruner = prepared.pruner;
      run.after_backward = [pruner](int64_t s, int64_t t) { pruner->after_backward(s, t); };
      run.after_step = [pruner](int64_t s, int64_t t) { pruner->after_step(s, t); };
    }
    if (prepared.keep_zeros) {
      run.after_step = [keep = prepared.keep_zeros](int64_t, int64_t) { keep(); };
    }
    model->finetune(run);
    // Parameters and FLOPs describe the model as it ends (MC-SMoE's fine-tune re-chose the kept
    // units of S).
    const auto after = model->measure(true, true);
    cell.set(metrics.quality.finetuned(), *after.quality);
    cell.set(metrics.parameters, stored());
    cell.set(metrics.flops, *after.flops);
  }
  return cell;
}

inline std::vector<Cell> run_compression(const ExperimentTask& task, const CompressionConfig& cfg,
                                         moeprune::ProgressBar* bar = nullptr,
                                         int64_t* done = nullptr, RunJournal* journal = nullptr) {
  std::vector<Cell> cells;
  for (const auto& method : detail::methods(task, cfg)) {
    const auto* same = method.sweep_pruned >= 0
                           ? detail::find_sweep_run(cfg.sweep, task.name(), method.sweep_pruned)
                           : nullptr;
    const auto& m = task.metrics();
    auto required = quality_metrics(task);
    required.insert(required.end(), {m.parameters.name, m.flops.name, m.latency.name});
    cells.push_back(detail::journaled(
        journal, fmt::format("compression/{}/{}/{}", task.name(), method.method, method.setting),
        fmt::format("{} {} {}", task.name(), method.method, method.setting), task, required, bar,
        done, [&] { return measure_compressed(task, method, same); }));
  }
  return cells;
}

}  // namespace experiments
