#pragma once

// The demo's compression comparison: expert pruning
// against the compressions practitioners compare it with (M-SMoE merging, MC-SMoE, Expert Drop,
// Layer Drop, Block Drop) on one fine-tuned model, at matched budgets of experts kept per MoE
// layer. Every row records what the compressed model stores, its FLOPs per image on the test
// set, its measured latency and its accuracy before and after the same short fine-tune.
#include "prune_sweep.h"

#include <moeprune/compression/low_rank.h>
#include <moeprune/compression/merging.h>
#include <moeprune/models/vision/moe_view.h>
#include <moeprune/models/vision/trimming.h>
#include <moeprune/train/model_cost.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <optional>

namespace experiments {

struct CompressionCell {
  std::string model, method, setting;
  /// Experts (or expert-equivalents of parameters) kept per MoE layer, the budget it matches.
  int64_t budget = 0;
  int64_t parameters = 0;
  double flops_per_image = 0, latency_ms = 0;
  double top1 = 0, top1_finetuned = -1;
  std::string detail;
};

// JSON for compression.json and the run journal.
inline void to_json(nlohmann::json& j, const CompressionCell& c) {
  j = {{"model", c.model},
       {"method", c.method},
       {"setting", c.setting},
       {"budget", c.budget},
       {"parameters", c.parameters},
       {"flops_per_image", c.flops_per_image},
       {"latency_ms", c.latency_ms},
       {"top1", c.top1},
       {"top1_finetuned", c.top1_finetuned},
       {"detail", c.detail}};
}

inline void from_json(const nlohmann::json& j, CompressionCell& c) {
  j.at("model").get_to(c.model);
  j.at("method").get_to(c.method);
  j.at("setting").get_to(c.setting);
  j.at("budget").get_to(c.budget);
  j.at("parameters").get_to(c.parameters);
  j.at("flops_per_image").get_to(c.flops_per_image);
  j.at("latency_ms").get_to(c.latency_ms);
  j.at("top1").get_to(c.top1);
  j.at("top1_finetuned").get_to(c.top1_finetuned);
  j.at("detail").get_to(c.detail);
}

struct CompressionConfig {
  std::string model_name;
  std::string title = "4-way task";  // for the plot
  std::string pretrained, finetuned;
  /// Experts kept per MoE layer, one row per method and budget.
  std::vector<int64_t> budgets;
  /// Fine-tuning steps after compressing (the same for every method); 0: none.
  int64_t post_steps = 100;
  int64_t calibration = 512;
  /// MC-SMoE: rank of the low-rank part and final density of the sparse part.
  int64_t rank = 8;
  double density = 0.1;
  /// Layer Drop / Block Drop counts.
  std::vector<int64_t> layer_drops = {1}, block_drops = {1, 2};
  bool consecutive_block_drop = false;
};

/// Median time of a forward pass of `model` (a ViT or a CausalLM) over `inputs` (evaluation mode,
/// no grad), in milliseconds, after one warm-up pass. On the 2-core build machine medians of 5
/// passes differed by up to 10% between runs; 11 steady it.
template <typename Model>
double latency_ms(Model& model, const torch::Tensor& inputs, int reps = 11) {
  torch::NoGradGuard no_grad;
  model->eval();
  model->forward(inputs);  // warm-up
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    const auto start = std::chrono::steady_clock::now();
    model->forward(inputs);
    times.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

namespace detail {

// What a method does to a freshly loaded model before the no-fine-tune evaluation, and what its
// fine-tune needs.
struct Prepared {
  std::string detail;
  bool distill = false;  // M-SMoE / MC-SMoE fine-tune with distillation, routers frozen
  std::function<void()> before_finetune;
  std::shared_ptr<moeprune::compression::SparsePruner> pruner;
};

struct Method {
  std::string method, setting;
  int64_t budget;
  std::function<Prepared(moeprune::VisionTransformer&)> apply;
};

inline std::string join(const std::vector<int64_t>& v) {
  return fmt::format("{}", fmt::join(v, ","));
}

// "block 1: 3 groups; block 3: 1 group"
inline std::string describe_counts(const std::map<int64_t, int64_t>& counts) {
  std::string out;
  for (const auto& [block, n] : counts) {
    out +=
        fmt::format("{}block {}: {} group{}", out.empty() ? "" : "; ", block, n, n == 1 ? "" : "s");
  }
  return out;
}

}  // namespace detail

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
/// loss over the calibration images (the distillation loss is zero right after factorising,
/// and so is its gradient), then S pruned to `density` at once.
inline void prune_sparse_once(moeprune::VisionTransformer& model, const Calibration& calibration,
                              double density) {
  model->train();
  model->zero_grad();
  moeprune::compression::prune_sparse_once(
      *moeprune::moe_view(model),
      [&] {
        int64_t begin = 0;
        calibration.data([&](const torch::Tensor& images) {
          const auto labels = calibration.images.labels.narrow(0, begin, images.size(0));
          begin += images.size(0);
          model->loss(model->forward(images), labels).backward();
        });
      },
      density);
  model->zero_grad();
}

inline std::vector<CompressionCell> run_compression(const CompressionConfig& cfg,
                                                    const Splits& splits,
                                                    moeprune::ProgressBar* bar = nullptr,
                                                    int64_t* done = nullptr,
                                                    RunJournal* journal = nullptr);

/// Rows run_compression will make for `cfg` (for a progress bar's total).
inline int64_t compression_runs(const CompressionConfig& cfg) {
  return 1 + 4 * static_cast<int64_t>(cfg.budgets.size()) +
         static_cast<int64_t>(cfg.layer_drops.size()) +
         static_cast<int64_t>(cfg.block_drops.size());
}

inline std::vector<CompressionCell> run_compression(const CompressionConfig& cfg,
                                                    const Splits& splits,
                                                    moeprune::ProgressBar* bar, int64_t* done,
                                                    RunJournal* journal) {
  namespace cm = moeprune::compression;
  namespace pr = moeprune::pruning;
  const auto calibration = calibration_set(splits.train, cfg.calibration);
  const auto& data = calibration.data;
  const auto latency_batch = moeprune::data::normalize_batch(
      splits.test.images.narrow(0, 0, std::min<int64_t>(500, splits.test.size())),
      channel_mean(splits.train), channel_std(splits.train));
  const auto pretrained = load_model(cfg.pretrained);
  auto teacher = load_model(cfg.finetuned);
  const auto num_layers = static_cast<int64_t>(teacher->moe_layers().size());
  const int64_t num_experts = teacher->options.num_experts();

  std::vector<detail::Method> methods;
  methods.push_back({"fine-tuned", "no compression", num_experts,
                     [](moeprune::VisionTransformer&) { return detail::Prepared{}; }});
  for (const int64_t kept : cfg.budgets) {
    const auto setting = fmt::format("{} of {} experts", kept, num_experts);
    methods.push_back({"prune (router_norm_change)", setting, kept, [&, kept](auto& m) {
                         const auto view = moeprune::moe_view(m);
                         const auto scores = pr::score_experts(
                             pr::RouterNormChange(), *view, moeprune::moe_view(pretrained).get());
                         const auto plan = pr::PruningPlan::same_count(
                             scores, *view, num_experts - kept, {}, "router_norm_change");
                         pr::apply_plan(*view, plan);
                         return detail::Prepared{};
                       }});
    methods.push_back({"Expert Drop", setting, kept, [&, kept](auto& m) {
                         cm::expert_drop(*moeprune::moe_view(m, data),
                                         cm::ExpertDropOptions().per_layer(num_experts - kept));
                         return detail::Prepared{};
                       }});
    methods.push_back(
        {"M-SMoE", fmt::format("{} groups per layer (global)", kept), kept, [&, kept](auto& m) {
           detail::Prepared p;
           p.distill = true;
           p.detail = detail::describe_counts(
               merge_globally(*moeprune::moe_view(m, data), kept * num_layers));
           return p;
         }});
    methods.push_back(
        {"MC-SMoE",
         fmt::format("{} groups, rank {}, S {:.0f}% dense", kept, cfg.rank, 100 * cfg.density),
         kept, [&, kept](auto& m) {
           const auto view = moeprune::moe_view(m, data);
           detail::Prepared p;
           p.distill = true;
           p.detail = detail::describe_counts(merge_globally(*view, kept * num_layers));
           cm::factorize_experts(*view, cfg.rank);
           p.before_finetune = sparse_part_restorer(view);
           prune_sparse_once(m, calibration, cfg.density);
           p.pruner = std::make_shared<cm::SparsePruner>(
               *view, cm::SparsePruningOptions()
                          .final_density(cfg.density)
                          .warmup_steps(std::max<int64_t>(1, cfg.post_steps / 10)));
           return p;
         }});
  }
  for (const int64_t n : cfg.layer_drops) {
    methods.push_back({"Layer Drop", fmt::format("{} of {} MoE layers", n, num_layers),
                       num_experts * (num_layers - n) / num_layers, [&, n](auto& m) {
                         detail::Prepared p;
                         p.detail = "blocks " + detail::join(cm::layer_drop(m, data, n));
                         return p;
                       }});
  }
  for (const int64_t n : cfg.block_drops) {
    methods.push_back({"Block Drop",
                       fmt::format("{} of {} blocks{}", n, teacher->options.depth(),
                                   cfg.consecutive_block_drop ? " (consecutive)" : ""),
                       0, [&, n](auto& m) {
                         detail::Prepared p;
                         p.detail = "blocks " + detail::join(cm::block_drop(
                                                    m, data, n, cfg.consecutive_block_drop));
                         return p;
                       }});
  }

  std::vector<CompressionCell> cells;
  for (auto& method : methods) {
    const auto key =
        fmt::format("compression/{}/{}/{}", cfg.model_name, method.method, method.setting);
    if (const auto run = journal != nullptr ? journal->find(key) : std::nullopt) {
      cells.push_back(run->get<CompressionCell>());
      if (bar != nullptr && done != nullptr) {
        bar->skip(1);
        bar->update(++*done, fmt::format("{} {} {}: {:.2f}% (from the journal)", cfg.model_name,
                                         method.method, method.setting, 100 * cells.back().top1));
      }
      continue;
    }
    const auto started = std::chrono::steady_clock::now();
    auto model = load_model(cfg.finetuned);
    torch::manual_seed(0);
    auto prepared = method.apply(model);
    CompressionCell cell;
    cell.model = cfg.model_name;
    cell.method = method.method;
    cell.setting = method.setting;
    cell.budget = method.budget;
    cell.detail = prepared.detail;
    cell.parameters = cm::stored_parameters(model);
    auto options = post_training_options(cfg.post_steps, splits.train);
    if (prepared.distill) {
      options.teacher(teacher);
    }
    if (prepared.pruner) {
      auto pruner = prepared.pruner;
      options.after_backward([pruner](int64_t s, int64_t t) { pruner->after_backward(s, t); });
      options.after_step([pruner](int64_t s, int64_t t) { pruner->after_step(s, t); });
    }
    {
      moeprune::Trainer evaluator(model, options);
      const auto eval = evaluator.evaluate(splits.test);
      cell.top1 = eval.top1;
      cell.flops_per_image = cm::flops_per_image(model, eval);
      cell.latency_ms = latency_ms(model, latency_batch);
    }
    if (cfg.post_steps > 0) {
      if (prepared.before_finetune) {
        prepared.before_finetune();
      }
      if (prepared.distill) {
        model->set_routers_trainable(false);
      }
      moeprune::Trainer trainer(model, options);
      trainer.fit(splits.train);
      // Parameters and FLOPs describe the model as it ends (MC-SMoE's fine-tune re-chose the
      // kept units of S).
      const auto eval = trainer.evaluate(splits.test);
      cell.top1_finetuned = eval.top1;
      cell.parameters = cm::stored_parameters(model);
      cell.flops_per_image = cm::flops_per_image(model, eval);
    }
    cells.push_back(cell);
    if (journal != nullptr) {
      journal->record(
          key, cell,
          std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    }
    if (bar != nullptr && done != nullptr) {
      bar->update(++*done, fmt::format("{} {} {}: {:.2f}%", cfg.model_name, method.method,
                                       method.setting, 100 * cell.top1));
    }
  }
  return cells;
}

inline void print_compression_table(const std::vector<CompressionCell>& cells,
                                    const CompressionConfig& cfg) {
  fmt::print("\n{}: compressions compared (test top-1 without / after {} fine-tuning steps)\n",
             cfg.model_name, cfg.post_steps);
  fmt::print("{:<28} {:<34} {:>10} {:>10} {:>11} {:>17}\n", "method", "setting", "params",
             "MFLOP/img", "latency ms", "top-1 (%)");
  for (const auto& c : cells) {
    fmt::print("{:<28} {:<34} {:>10} {:>10.2f} {:>11.1f} {:>17}\n", c.method, c.setting,
               c.parameters, c.flops_per_image / 1e6, c.latency_ms,
               cfg.post_steps > 0
                   ? fmt::format("{:.2f} / {:.2f}", 100 * c.top1, 100 * c.top1_finetuned)
                   : fmt::format("{:.2f}", 100 * c.top1));
  }
}

inline void write_compression(const std::vector<CompressionCell>& cells, const std::string& prefix,
                              nlohmann::json header) {
  header["results"] = nlohmann::json::array();
  std::string csv =
      "model,method,setting,budget,parameters,flops_per_image,latency_ms,top1,top1_finetuned,"
      "detail\n";
  for (const auto& c : cells) {
    header["results"].push_back(c);
    csv += fmt::format("{},{},\"{}\",{},{},{:.0f},{:.3f},{:.6f},{:.6f},\"{}\"\n", c.model, c.method,
                       c.setting, c.budget, c.parameters, c.flops_per_image, c.latency_ms, c.top1,
                       c.top1_finetuned, c.detail);
  }
  write_text(prefix + ".json", header.dump(2) + "\n");
  write_text(prefix + ".csv", csv);
}

/// gnuplot: accuracy against stored parameters (without and after fine-tuning) and against
/// latency, a line per method. Returns the PNG path, or "" when gnuplot failed. The language demo
/// plots bits per byte with its own label and scale 1, and its own latency label.
inline std::string plot_compression(
    const std::vector<CompressionCell>& cells, const CompressionConfig& cfg, const std::string& dir,
    const std::string& ylabel = "test top-1 (%)", double scale = 100,
    const std::string& latency_label = "latency of 500 test images (ms, median of 11)") {
  std::vector<std::string> methods;
  for (const auto& c : cells) {
    if (std::find(methods.begin(), methods.end(), c.method) == methods.end()) {
      methods.push_back(c.method);
    }
  }
  const auto data_path = dir + "/compression_" + cfg.model_name + ".dat";
  std::string data;
  for (const auto& m : methods) {
    data += "# " + m + "\n";
    std::vector<CompressionCell> rows;
    for (const auto& c : cells) {
      if (c.method == m) rows.push_back(c);
    }
    std::sort(rows.begin(), rows.end(),
              [](const auto& a, const auto& b) { return a.parameters < b.parameters; });
    for (const auto& c : rows) {
      data += fmt::format("{} {} {} {}\n", static_cast<double>(c.parameters) / 1e3, scale * c.top1,
                          scale * c.top1_finetuned, c.latency_ms);
    }
    data += "\n\n";
  }
  write_text(data_path, data);
  const auto png = dir + "/compression_" + cfg.model_name + ".png";
  std::string script = fmt::format(
      "set terminal pngcairo size 1500,460 font ',10' noenhanced\nset output '{}'\n"
      "set multiplot layout 1,3 title '{}: compressions of the fine-tuned model ({})'\n"
      "set ylabel '{}'\nset key {} right\nset grid\n",
      png, cfg.model_name, cfg.title, ylabel, scale == 100 ? "bottom" : "top");
  // Lines join a method's budgets in parameter order; latency is a scatter (it need not follow).
  const std::vector<std::tuple<std::string, std::string, std::string, std::string>> panels = {
      {"without fine-tuning", "stored parameters (thousands)", "1:2", "linespoints"},
      {fmt::format("after {} fine-tuning steps", cfg.post_steps), "stored parameters (thousands)",
       "1:3", "linespoints"},
      {fmt::format("after {} fine-tuning steps", cfg.post_steps), latency_label, "4:3", "points"}};
  for (const auto& [title, xlabel, columns, style] : panels) {
    script += fmt::format("set title '{}'\nset xlabel '{}'\nplot ", title, xlabel);
    for (size_t i = 0; i < methods.size(); ++i) {
      script += fmt::format("{}'{}' index {} using {} with {} pt 7 ps 1.3 title '{}'",
                            i ? ", " : "", data_path, i, columns, style, methods[i]);
    }
    script += "\n";
  }
  script += "unset multiplot\n";
  const auto script_path = dir + "/compression_" + cfg.model_name + ".gp";
  write_text(script_path, script);
  return std::system(("gnuplot '" + script_path + "' 2>/dev/null").c_str()) == 0 ? png : "";
}

}  // namespace experiments
