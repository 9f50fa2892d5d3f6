// Compresses a fine-tuned vision MoE checkpoint with one of the methods expert pruning is
// compared against: M-SMoE merging, MC-SMoE (merging + low rank + sparse), Expert Drop, Layer
// Drop or Block Drop. Optionally fine-tunes afterwards (distillation from the uncompressed model
// with routers frozen for the merging methods, as their papers do), prints what the model stores,
// its FLOPs and its accuracy before and after, and writes the compressed checkpoint.
#include "vision_task.h"

namespace {

namespace cm = moeprune::compression;

void report(const std::string& title, moeprune::VisionTransformer& model,
            moeprune::Trainer& trainer, const moeprune::data::ImageDataset& test) {
  const auto eval = trainer.evaluate(test);
  fmt::print("{}: {} parameters stored, {:.2f} MFLOP/image, {}\n", title,
             cm::stored_parameters(model), cm::flops_per_image(model, eval) / 1e6,
             moeprune::format_eval(eval));
}

int run(int argc, char** argv) {
  CLI::App app{
      "Compresses a fine-tuned vision MoE checkpoint by merging (M-SMoE), merging + low rank + "
      "sparse (MC-SMoE), Expert Drop, Layer Drop or Block Drop."};
  std::string finetuned, method, out, similarity = "router-logits";
  int64_t groups = 0, global_groups = 0, rank = 8, drop = 0, post_steps = 0,
          calibration_images = 512, threads = 0;
  double density = 0.1;
  bool no_align = false, global = false, keep_router_rows = false, consecutive = false;
  app.add_option("--finetuned", finetuned, "Fine-tuned checkpoint to compress")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--method", method, "msmoe, mcsmoe, expert_drop, layer_drop or block_drop")
      ->required()
      ->check(CLI::IsMember({"msmoe", "mcsmoe", "expert_drop", "layer_drop", "block_drop"}));
  app.add_option("--groups", groups, "msmoe/mcsmoe: merged experts per MoE layer");
  app.add_option("--global-groups", global_groups,
                 "msmoe/mcsmoe: merged experts over all MoE layers (M-SMoE's global budget)");
  app.add_option("--similarity", similarity, "msmoe/mcsmoe: how members join a dominant expert")
      ->check(CLI::IsMember({"router-logits", "weights"}))
      ->capture_default_str();
  app.add_flag("--no-align", no_align, "msmoe/mcsmoe: merge without permutation alignment");
  app.add_option("--rank", rank, "mcsmoe: rank of the low-rank part")->capture_default_str();
  app.add_option("--density", density, "mcsmoe: final density of the sparse part")
      ->capture_default_str();
  app.add_option("--drop", drop,
                 "expert_drop: experts per MoE layer (or in all, with --global); layer_drop: "
                 "MoE layers; block_drop: blocks");
  app.add_flag("--global", global, "expert_drop: rank experts across layers");
  app.add_flag("--keep-router-rows", keep_router_rows,
               "expert_drop: keep the dropped experts' router rows (their tokens are lost)");
  app.add_flag("--consecutive", consecutive, "block_drop: drop one run of consecutive blocks");
  app.add_option("--calibration-images", calibration_images, "Training images used for calibration")
      ->capture_default_str();
  app.add_option("--post-steps", post_steps,
                 "Fine-tuning steps after compressing (mcsmoe prunes its sparse part during "
                 "them; without them it prunes once from one pass of gradients)")
      ->capture_default_str();
  app.add_option("--out", out, "Where to write the compressed checkpoint");
  app.add_option("--threads", threads, "Torch threads (0: torch's default)");
  std::string data_dir;
  app.add_option("--data-dir", data_dir,
                 "Folder of the data files (default: Debian's Fashion-MNIST; CIFAR checkpoints "
                 "need the cifar-10-batches-bin folder)");
  CLI11_PARSE(app, argc, argv);

  const bool merging = method == "msmoe" || method == "mcsmoe";
  TORCH_CHECK(!merging || (groups > 0) != (global_groups > 0), "--method ", method,
              " needs --groups or --global-groups (one of them)");
  TORCH_CHECK(merging || drop > 0, "--method ", method, " needs --drop N (N >= 1)");
  // Options another method reads are refused rather than silently ignored.
  const std::map<std::string, std::vector<std::string>> applies = {
      {"--groups", {"msmoe", "mcsmoe"}},
      {"--global-groups", {"msmoe", "mcsmoe"}},
      {"--similarity", {"msmoe", "mcsmoe"}},
      {"--no-align", {"msmoe", "mcsmoe"}},
      {"--rank", {"mcsmoe"}},
      {"--density", {"mcsmoe"}},
      {"--drop", {"expert_drop", "layer_drop", "block_drop"}},
      {"--global", {"expert_drop"}},
      {"--keep-router-rows", {"expert_drop"}},
      {"--consecutive", {"block_drop"}}};
  for (const auto& [option, methods] : applies) {
    TORCH_CHECK(app.count(option) == 0 ||
                    std::find(methods.begin(), methods.end(), method) != methods.end(),
                option, " does not apply to --method ", method, " (it is for ",
                fmt::format("{}", fmt::join(methods, ", ")), ")");
  }
  TORCH_CHECK(out.empty() || !std::filesystem::exists(out), "--out ", out,
              " exists; give a new path");
  experiments::set_up_process(threads);
  const auto meta = experiments::read_metadata(finetuned);
  experiments::DataArgs data_args;
  data_args.data = meta.data;
  data_args.dir = data_dir;
  const auto splits = experiments::load_splits(data_args, meta.labels);
  const auto calibration = experiments::calibration_set(splits.train, calibration_images);
  const auto& data = calibration.data;

  auto teacher = experiments::load_model(finetuned);
  auto model = experiments::load_model(finetuned);
  auto options = experiments::post_training_options(post_steps, splits.train).progress(true);
  {
    moeprune::Trainer before(model, options);
    report("before", model, before, splits.test);
  }

  std::shared_ptr<cm::SparsePruner> pruner;
  const auto view = moeprune::moe_view(model, data);
  if (merging) {
    const auto usage = cm::collect_expert_usage(*view);
    const auto counts = global_groups > 0 ? cm::global_group_counts(*view, usage, global_groups)
                                          : cm::same_group_count(*view, groups);
    const auto merge_groups =
        cm::group_experts(*view, usage, counts,
                          similarity == "weights" ? cm::MergeSimilarity::kWeights
                                                  : cm::MergeSimilarity::kRouterLogits);
    fmt::print("merge groups (expert (usage frequency), dominant first):\n{}",
               cm::format_groups(merge_groups, usage));
    cm::merge_experts(*view, merge_groups, usage, !no_align);
    if (method == "mcsmoe") {
      cm::factorize_experts(*view, rank);
      pruner = std::make_shared<cm::SparsePruner>(
          *view, cm::SparsePruningOptions().final_density(density).warmup_steps(
                     std::max<int64_t>(1, post_steps / 10)));
      if (post_steps == 0) {
        experiments::prune_sparse_once_on_calibration(model, calibration, density);
      }
    }
    options.teacher(teacher);
    model->set_routers_trainable(false);
  } else if (method == "expert_drop") {
    const auto plan = cm::expert_drop(*view, (global ? cm::ExpertDropOptions().total(drop)
                                                     : cm::ExpertDropOptions().per_layer(drop))
                                                 .remove_router_rows(!keep_router_rows));
    fmt::print("{}", plan.table());
  } else if (method == "layer_drop") {
    for (const auto& [block, s] : cm::moe_layer_similarity(model, data)) {
      fmt::print("MoE block {}: cos(h, h + MoE(LN(h))) = {:.4f}\n", block, s);
    }
    fmt::print("dropped the MoE sub-blocks of blocks {}\n",
               fmt::join(cm::layer_drop(model, data, drop), ", "));
  } else {
    const auto sim = cm::block_similarity(model, data, consecutive ? drop : 1);
    for (size_t i = 0; i < sim.size(); ++i) {
      fmt::print("block {}: cos(h_{}, h_{}) = {:.4f}\n", i, i, i + (consecutive ? drop : 1),
                 sim[i]);
    }
    fmt::print("dropped blocks {}\n",
               fmt::join(cm::block_drop(model, data, drop, consecutive), ", "));
  }
  if (pruner) {
    options.after_backward([pruner](int64_t s, int64_t t) { pruner->after_backward(s, t); });
    options.after_step([pruner](int64_t s, int64_t t) { pruner->after_step(s, t); });
  }
  moeprune::Trainer trainer(model, options);
  report(pruner && post_steps > 0 ? "merged and factorised (S dense until the fine-tune prunes it)"
                                  : "compressed",
         model, trainer, splits.test);
  if (post_steps > 0) {
    trainer.fit(splits.train);
    report(fmt::format("after {} fine-tuning steps", post_steps), model, trainer, splits.test);
  }
  if (!out.empty()) {
    model->set_routers_trainable(true);
    moeprune::save_vision_transformer(out, model,
                                      experiments::task_metadata(data_args, meta.labels));
    fmt::print("wrote {}\n", out);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return experiments::guarded(run, argc, argv);
}
