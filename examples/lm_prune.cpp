// Prunes a Hugging Face MoE language model in memory and writes a checkpoint transformers loads:
// score the routed experts with a criterion on calibration tokens, drop the n lowest of every
// MoE layer (and/or Layer Drop whole MoE blocks, Block Drop whole decoder layers), optionally
// fine-tune the pruned model on the same tokens, report perplexity before and after.
//   lm_prune MODEL_DIR CALIBRATION_TOKENS OUT_DIR --prune 2 [--criterion frequency]
//            [--pretrained DIR] [--drop-router-rows] [--layer-drop N] [--block-drop N
//            [--consecutive]] [--finetune-steps 50 --lr 1e-4]
#include "lm_common.h"

#include <moeprune/compression/residual_similarity.h>
#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/evaluation.h>
#include <moeprune/models/lm/moe_view.h>
#include <moeprune/models/lm/trimming.h>
#include <moeprune/pruning/criterion.h>
#include <moeprune/pruning/pruning_plan.h>
#include <moeprune/train/lm_trainer.h>

#include <fmt/format.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <string>

int main(int argc, char** argv) {
  CLI::App app{"Prunes the routed experts of a MoE language model and saves it"};
  std::string model_dir, tokens_path, out_dir, pretrained_dir, criterion_name = "frequency",
                                                               format = "ids";
  int64_t prune = 1, context = 256, finetune_steps = 0, seed = 0, layer_drop = 0, block_drop = 0;
  double lr = 1e-4;
  bool drop_rows = false, consecutive = false;
  const auto registry = moeprune::pruning::CriterionRegistry::with_builtins();
  app.add_option("model", model_dir, "fine-tuned checkpoint folder")->required();
  app.add_option("tokens", tokens_path, "calibration (and fine-tuning) token file")->required();
  app.add_option("out", out_dir, "new checkpoint folder to write")->required();
  app.add_option("--prune", prune,
                 "experts to remove from every MoE layer (default 1, or 0 with --layer-drop / "
                 "--block-drop)");
  app.add_option("--criterion", criterion_name,
                 "one of: " + fmt::format("{}", fmt::join(registry.names(), ", ")))
      ->capture_default_str();
  app.add_option("--pretrained", pretrained_dir,
                 "pre-trained checkpoint (router_norm_change, ...)");
  app.add_option("--format", format, "token file: ids or bytes")->capture_default_str();
  app.add_option("--context", context, "tokens per calibration / training sequence")
      ->capture_default_str();
  app.add_flag("--drop-router-rows", drop_rows,
               "remove the pruned experts' router rows too (Expert Drop; renormalised top-k)");
  app.add_option("--layer-drop", layer_drop,
                 "Layer Drop: remove the MoE blocks of this many layers, those that change the "
                 "residual stream least")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--block-drop", block_drop,
                 "Block Drop: remove this many whole decoder layers, those that change the "
                 "residual stream least")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--consecutive", consecutive, "Block Drop removes one run of adjacent layers");
  app.add_option("--finetune-steps", finetune_steps, "AdamW steps after pruning")
      ->capture_default_str();
  app.add_option("--lr", lr, "fine-tuning learning rate")->capture_default_str();
  app.add_option("--seed", seed, "seed of random criteria")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (app.count("--prune") == 0 && (layer_drop > 0 || block_drop > 0)) {
    prune = 0;
  }
  try {
    const auto criterion = registry.create(criterion_name);
    const auto stream = examples::read_tokens(tokens_path, format);
    // Calibration batches: the stream cut into sequences of `context` tokens.
    const int64_t sequences = std::max<int64_t>(1, stream.size(0) / context);
    const int64_t length = std::min<int64_t>(context, stream.size(0));
    const auto batch = stream.narrow(0, 0, sequences * length).view({sequences, length});
    moeprune::CalibrationData calibration = [&](const auto& visit) {
      for (int64_t i = 0; i < sequences; i += 8) {
        visit(batch.narrow(0, i, std::min<int64_t>(8, sequences - i)));
      }
    };
    auto model = moeprune::lm::load_causal_lm(model_dir);
    const auto eval = moeprune::lm::PerplexityOptions().context(length);
    fmt::print("{}\nperplexity before pruning: {:.3f}\n", examples::summary(*model),
               moeprune::lm::perplexity(model, stream, eval).perplexity());

    if (prune > 0) {
      const auto view = moeprune::lm::moe_view(model, calibration);
      std::shared_ptr<moeprune::MoEView> pretrained_view;
      moeprune::lm::CausalLM pretrained{nullptr};
      if (!pretrained_dir.empty()) {
        pretrained = moeprune::lm::load_causal_lm(pretrained_dir);
        pretrained_view = moeprune::lm::moe_view(pretrained, calibration);
      }
      const auto scores = moeprune::pruning::score_experts(
          *criterion,
          moeprune::pruning::CriterionContext{view, pretrained_view, static_cast<uint64_t>(seed)});
      const auto plan =
          moeprune::pruning::PruningPlan::same_count(scores, *view, prune, {}, criterion_name);
      fmt::print("{}", plan.table());
      moeprune::pruning::apply_plan(*view, plan, drop_rows);
    }
    // Layer Drop, then Block Drop, each scored on the model as it is then.
    if (layer_drop > 0) {
      // compression::layer_drop in two steps, to print the scores.
      const auto sim = moeprune::compression::moe_layer_similarity(model, calibration);
      const auto gone = moeprune::compression::highest_scores({sim.begin(), sim.end()}, layer_drop);
      for (const int64_t layer : gone) {
        model->drop_mlp(layer);
      }
      for (const auto& [layer, cos] : sim) {
        fmt::print("layer {:>3}  cos(h, h + MoE) {:.6f}{}\n", layer, cos,
                   std::find(gone.begin(), gone.end(), layer) != gone.end() ? "  dropped" : "");
      }
    }
    if (block_drop > 0) {
      const auto gone =
          moeprune::compression::block_drop(model, calibration, block_drop, consecutive);
      fmt::print("Block Drop removed decoder layers {}\n", fmt::join(gone, ", "));
    }
    fmt::print("{}\nperplexity after pruning:  {:.3f}\n", examples::summary(*model),
               moeprune::lm::perplexity(model, stream, eval).perplexity());

    if (finetune_steps > 0) {
      // Post-pruning fine-tune on the same tokens: AdamW, warm-up + cosine, clipping.
      moeprune::train_lm(model, stream, stream,
                         moeprune::LMTrainerOptions()
                             .steps(finetune_steps)
                             .batch_size(std::min<int64_t>(8, sequences))
                             .context(std::min<int64_t>(length, stream.size(0) - 1))
                             .lr(lr)
                             .warmup_steps(std::min<int64_t>(10, finetune_steps))
                             .eval_context(length));
      fmt::print("perplexity after fine-tuning: {:.3f}\n",
                 moeprune::lm::perplexity(model, stream, eval).perplexity());
    }
    moeprune::lm::save_causal_lm(model, out_dir);
    fmt::print("wrote {}\n", out_dir);
  } catch (const c10::Error& e) {
    fmt::print(stderr, "lm_prune: {}\n", e.what_without_backtrace());
    return 1;
  }
  return 0;
}
