#pragma once

// The language demo's compression comparison: expert pruning against M-SMoE merging, MC-SMoE,
// Expert Drop, Layer Drop and Block Drop on the fine-tuned language model, at matched budgets of
// experts kept per MoE layer. Each row: stored parameters, FLOPs per token, latency, and bits
// per byte before and after the same short fine-tune. The vision comparison
// (compression_compare.h) is the model; its cell type and tables are shared.
#include "compression_compare.h"
#include "lm_sweep.h"

#include <moeprune/models/lm/model_cost.h>
#include <moeprune/models/lm/trimming.h>

namespace experiments {

struct LMCompressionConfig {
  std::string pretrained, finetuned;
  std::vector<int64_t> budgets;  // experts kept per MoE layer
  std::vector<int64_t> layer_drops = {1, 2}, block_drops = {1, 2};
  int64_t calibration_windows = 32, context = 256;
  bool drop_router_rows = true;     // for the pruning rows (LMSweepConfig says more)
  int64_t rank = 8;                 // MC-SMoE's low-rank part
  double density = 0.1;             // and the final density of its sparse part
  moeprune::LMTrainerOptions post;  // the fine-tune after compressing (steps 0: none)
  /// The sweep run with the same model, post-pruning fine-tune and router semantics, if any: the
  /// unpruned row and the router-norm-change rows are those runs (the same computation, same
  /// seed), so their bits per byte are taken from it and only the costs are measured here.
  std::vector<LMSweepCell> sweep;
};

inline int64_t lm_compression_runs(const LMCompressionConfig& cfg) {
  return 1 + 4 * static_cast<int64_t>(cfg.budgets.size()) +
         static_cast<int64_t>(cfg.layer_drops.size() + cfg.block_drops.size());
}

namespace detail {

struct LMPrepared {
  std::string detail;
  bool distill = false;  // M-SMoE / MC-SMoE: distillation from the fine-tuned model, routers frozen
  std::function<void()> before_finetune;
  std::shared_ptr<moeprune::compression::SparsePruner> pruner;
};

struct LMMethod {
  std::string method, setting;
  int64_t budget;
  std::function<LMPrepared(moeprune::lm::CausalLM&)> apply;
  /// Experts per layer the same run of the sweep (router_norm_change, seed 0) pruned; -1: none.
  int64_t sweep_pruned = -1;
};

inline const LMSweepCell* find_sweep_run(const std::vector<LMSweepCell>& cells, int64_t pruned) {
  for (const auto& c : cells) {
    if (c.criterion == "router_norm_change" && c.pruned == pruned && c.seed == 0) return &c;
  }
  return nullptr;
}

inline void freeze_routers(moeprune::lm::CausalLM& model) {
  for (auto& [index, layer] : model->moe_layers()) {
    layer->router().router_weight().set_requires_grad(false);
  }
}

// "layer 1: 3 groups; ..."
inline std::string describe_lm_counts(const std::map<int64_t, int64_t>& counts) {
  std::string out;
  for (const auto& [layer, n] : counts) {
    out += fmt::format("{}layer {}: {}", out.empty() ? "" : "; ", layer, n);
  }
  return out;
}

}  // namespace detail

inline std::vector<CompressionCell> run_lm_compression(const LMCompressionConfig& cfg,
                                                       const LMTask& task,
                                                       moeprune::ProgressBar& bar, int64_t& done,
                                                       RunJournal* journal) {
  namespace cm = moeprune::compression;
  namespace pr = moeprune::pruning;
  namespace lm = moeprune::lm;
  const auto calibration = lm_calibration(task.train, cfg.calibration_windows, cfg.context);
  // MC-SMoE's one-shot importance needs next tokens: windows one token longer.
  const auto loss_windows = even_windows(task.train, cfg.calibration_windows, cfg.context + 1);
  const auto cost_ids = even_windows(task.test, 4, cfg.context);
  const auto pretrained = lm::load_causal_lm(cfg.pretrained);
  auto teacher = lm::load_causal_lm(cfg.finetuned);
  const auto num_layers = static_cast<int64_t>(teacher->moe_layers().size());
  const int64_t num_experts = teacher->options.moe()->num_experts();

  std::vector<detail::LMMethod> methods;
  methods.push_back({"fine-tuned", "no compression", num_experts,
                     [](lm::CausalLM&) { return detail::LMPrepared{}; }, 0});
  for (const int64_t kept : cfg.budgets) {
    const auto setting = fmt::format("{} of {} experts", kept, num_experts);
    methods.push_back(
        {"prune (router_norm_change)", setting, kept,
         [&, kept](auto& m) {
           const auto view = lm::moe_view(m);
           const auto scores =
               pr::score_experts(pr::RouterNormChange(), *view, lm::moe_view(pretrained).get());
           pr::apply_plan(*view,
                          pr::PruningPlan::same_count(scores, *view, num_experts - kept, {},
                                                      "router_norm_change"),
                          cfg.drop_router_rows);
           return detail::LMPrepared{};
         },
         num_experts - kept});
    methods.push_back({"Expert Drop", setting, kept, [&, kept](auto& m) {
                         cm::expert_drop(*lm::moe_view(m, calibration),
                                         cm::ExpertDropOptions().per_layer(num_experts - kept));
                         return detail::LMPrepared{};
                       }});
    methods.push_back(
        {"M-SMoE", fmt::format("{} groups per layer (global)", kept), kept, [&, kept](auto& m) {
           detail::LMPrepared p;
           p.distill = true;
           p.detail = detail::describe_lm_counts(
               merge_globally(*lm::moe_view(m, calibration), kept * num_layers));
           return p;
         }});
    methods.push_back(
        {"MC-SMoE",
         fmt::format("{} groups, rank {}, S {:.0f}% dense", kept, cfg.rank, 100 * cfg.density),
         kept, [&, kept](auto& m) {
           const auto view = lm::moe_view(m, calibration);
           detail::LMPrepared p;
           p.distill = true;
           p.detail = detail::describe_lm_counts(merge_globally(*view, kept * num_layers));
           cm::factorize_experts(*view, cfg.rank);
           p.before_finetune = sparse_part_restorer(view);
           // Without a fine-tune to prune during, S is pruned at once by the importance of one
           // pass of the next-token loss over calibration windows.
           m->train();
           m->zero_grad();
           cm::prune_sparse_once(
               *view,
               [&] {
                 for (int64_t b = 0; b < loss_windows.size(0); b += 8) {
                   const auto w =
                       loss_windows.narrow(0, b, std::min<int64_t>(8, loss_windows.size(0) - b));
                   const auto logits = m->forward(w.narrow(1, 0, cfg.context)).logits;
                   torch::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}),
                                             w.narrow(1, 1, cfg.context).reshape({-1}))
                       .backward();
                 }
               },
               cfg.density);
           m->zero_grad();
           p.pruner = std::make_shared<cm::SparsePruner>(
               *view, cm::SparsePruningOptions()
                          .final_density(cfg.density)
                          .warmup_steps(std::max<int64_t>(1, cfg.post.steps() / 10)));
           return p;
         }});
  }
  for (const int64_t n : cfg.layer_drops) {
    methods.push_back({"Layer Drop", fmt::format("{} of {} MoE layers", n, num_layers),
                       num_experts * (num_layers - n) / num_layers, [&, n](auto& m) {
                         detail::LMPrepared p;
                         p.detail = "layers " + detail::join(cm::layer_drop(m, calibration, n));
                         return p;
                       }});
  }
  for (const int64_t n : cfg.block_drops) {
    methods.push_back({"Block Drop",
                       fmt::format("{} of {} decoder layers", n, teacher->options.num_layers()), 0,
                       [&, n](auto& m) {
                         detail::LMPrepared p;
                         p.detail = "layers " + detail::join(cm::block_drop(m, calibration, n));
                         return p;
                       }});
  }

  std::vector<CompressionCell> cells;
  for (auto& method : methods) {
    const auto key = fmt::format("compression/lm/{}/{}", method.method, method.setting);
    if (const auto found = journal != nullptr ? journal->find(key) : std::nullopt) {
      cells.push_back(found->get<CompressionCell>());
      bar.skip(1);
      bar.update(++done, fmt::format("{} {}: {:.4f} bits/byte (from the journal)", method.method,
                                     method.setting, cells.back().top1));
      continue;
    }
    const auto started = std::chrono::steady_clock::now();
    auto model = lm::load_causal_lm(cfg.finetuned);
    torch::manual_seed(0);
    auto prepared = method.apply(model);
    // The cell's accuracy fields hold bits per byte here (compression.json names them so).
    CompressionCell cell;
    cell.model = "lm";
    cell.method = method.method;
    cell.setting = method.setting;
    cell.budget = method.budget;
    cell.detail = prepared.detail;
    cell.parameters = cm::stored_parameters(model);
    cell.flops_per_image = cm::flops_per_token(model, cost_ids);
    cell.latency_ms = latency_ms(model, cost_ids);
    const auto* same =
        method.sweep_pruned >= 0 ? detail::find_sweep_run(cfg.sweep, method.sweep_pruned) : nullptr;
    if (same != nullptr) {
      cell.top1 = same->bpb;
      cell.top1_finetuned = same->bpb_finetuned;
      cell.detail = "bits per byte: the sweep's run";
    } else {
      cell.top1 = bits_per_byte(model, task.test, cfg.context);
    }
    if (same == nullptr && cfg.post.steps() > 0) {
      if (prepared.before_finetune) prepared.before_finetune();
      auto post = cfg.post;
      post.seed(0).progress(false);
      if (prepared.distill) {
        detail::freeze_routers(model);
        post.teacher(teacher);
      }
      if (prepared.pruner) {
        auto pruner = prepared.pruner;
        post.after_backward([pruner](int64_t s, int64_t t) { pruner->after_backward(s, t); });
        post.after_step([pruner](int64_t s, int64_t t) { pruner->after_step(s, t); });
      }
      moeprune::train_lm(model, task.train, {}, post);
      cell.top1_finetuned = bits_per_byte(model, task.test, cfg.context);
      // As the model ends (MC-SMoE's fine-tune re-chose the kept units of S).
      cell.parameters = cm::stored_parameters(model);
      cell.flops_per_image = cm::flops_per_token(model, cost_ids);
    }
    cells.push_back(cell);
    if (journal != nullptr) {
      journal->record(
          key, cell,
          std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    }
    bar.update(++done, fmt::format("{} {}: {:.4f} -> {:.4f} bits/byte", method.method,
                                   method.setting, cell.top1, cell.top1_finetuned));
  }
  return cells;
}

inline void print_lm_compression_table(const std::vector<CompressionCell>& cells,
                                       int64_t post_steps, const std::string& language) {
  fmt::print(
      "\ncompressions compared on the {} test split (bits per byte without / after {} "
      "fine-tuning steps; lower is better)\n",
      language, post_steps);
  fmt::print("{:<28} {:<34} {:>10} {:>11} {:>11} {:>17}\n", "method", "setting", "params",
             "MFLOP/token", "latency ms", "bits per byte");
  for (const auto& c : cells) {
    fmt::print("{:<28} {:<34} {:>10} {:>11.3f} {:>11.1f} {:>17}\n", c.method, c.setting,
               c.parameters, c.flops_per_image / 1e6, c.latency_ms,
               post_steps > 0 ? fmt::format("{:.3f} / {:.3f}", c.top1, c.top1_finetuned)
                              : fmt::format("{:.3f}", c.top1));
  }
}

/// compression.json / .csv with the language model's names for the fields.
inline void write_lm_compression(const std::vector<CompressionCell>& cells,
                                 const std::string& prefix, nlohmann::json header) {
  header["results"] = nlohmann::json::array();
  std::string csv =
      "method,setting,budget,parameters,flops_per_token,latency_ms,bits_per_byte,"
      "bits_per_byte_finetuned,detail\n";
  for (const auto& c : cells) {
    header["results"].push_back({{"method", c.method},
                                 {"setting", c.setting},
                                 {"budget", c.budget},
                                 {"parameters", c.parameters},
                                 {"flops_per_token", c.flops_per_image},
                                 {"latency_ms", c.latency_ms},
                                 {"bits_per_byte", c.top1},
                                 {"bits_per_byte_finetuned", c.top1_finetuned},
                                 {"detail", c.detail}});
    csv += fmt::format("{},\"{}\",{},{},{:.0f},{:.3f},{:.6f},{:.6f},\"{}\"\n", c.method, c.setting,
                       c.budget, c.parameters, c.flops_per_image, c.latency_ms, c.top1,
                       c.top1_finetuned, c.detail);
  }
  write_text(prefix + ".json", header.dump(2) + "\n");
  write_text(prefix + ".csv", csv);
}

}  // namespace experiments
