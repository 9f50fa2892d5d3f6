// Fine-tunes a pre-trained checkpoint on a downstream task (a new label set built from the same
// images) with a new classification head, and saves the fine-tuned checkpoint.
#include "vision_common.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"Fine-tunes a pre-trained vision MoE on a downstream task with a new head."};
  examples::DataArgs data;
  examples::add_data_options(app, data);
  std::string pretrained, out = "checkpoints/vmoe_finetuned.pt", log;
  int64_t epochs = 1, batch = 128, warmup = 100, threads = 0;
  double lr = 0.01, wd = 0.0, clip = 10.0, capacity_factor = 1.5;
  std::string optimizer = "sgd";
  uint64_t seed = 0;
  app.add_option("--pretrained", pretrained, "Pre-trained checkpoint (from vmoe_train)")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--epochs", epochs, "Epochs")->capture_default_str();
  app.add_option("--batch-size", batch, "Batch size")->capture_default_str();
  app.add_option("--lr", lr, "Peak learning rate")->capture_default_str();
  app.add_option("--optimizer", optimizer, "sgd (momentum 0.9) or adamw")
      ->check(CLI::IsMember({"adamw", "sgd"}))
      ->capture_default_str();
  app.add_option("--weight-decay", wd, "Weight decay")->capture_default_str();
  app.add_option("--warmup", warmup, "Linear warm-up steps")->capture_default_str();
  app.add_option("--clip", clip, "Gradient clipping by global norm (0: off)")
      ->capture_default_str();
  app.add_option("--capacity-factor", capacity_factor,
                 "MoE capacity factor while fine-tuning and evaluating (V-MoE: 1.5)")
      ->capture_default_str();
  app.add_option("--seed", seed, "Seed")->capture_default_str();
  app.add_option("--threads", threads, "Torch threads (0: torch's default)");
  app.add_option("--out", out, "Checkpoint to write")->capture_default_str();
  app.add_option("--log", log, "JSON log of the run");
  CLI11_PARSE(app, argc, argv);

  examples::keep_freed_memory();
  if (threads > 0) {
    torch::set_num_threads(static_cast<int>(threads));
  }
  const auto meta = examples::read_metadata(pretrained);
  // Without --labels: the checkpoint's own task (post-pruning fine-tuning).
  const auto splits = examples::load_splits(data, meta.labels);
  torch::manual_seed(seed);
  moeprune::VisionTransformer vit(meta.options);
  moeprune::load_checkpoint(pretrained, *vit);
  // A new task gets a new head; the same task (post-pruning fine-tuning) keeps the trained one.
  const bool same_task = meta.labels == splits.mapping &&
                         meta.options.num_classes() == splits.train.num_classes;
  if (!same_task) {
    vit->replace_head(splits.train.num_classes);
  }
  vit->set_capacity_factor(capacity_factor);
  fmt::print("fine-tuning {} on {} classes ({} training images, {} head)\n", pretrained,
             splits.train.num_classes, splits.train.size(), same_task ? "its trained" : "a new");
  std::fflush(stdout);

  moeprune::Trainer trainer(vit,
                            moeprune::TrainerOptions()
                                .epochs(epochs)
                                .batch_size(batch)
                                .lr(lr)
                                .optimizer(optimizer == "sgd" ? moeprune::OptimizerKind::kSgd
                                                              : moeprune::OptimizerKind::kAdamW)
                                .weight_decay(wd)
                                .warmup_steps(warmup)
                                .clip_norm(clip)
                                .seed(seed)
                                .mean(examples::channel_mean(splits.train))
                                .std(examples::channel_std(splits.train))
                                .log_path(log));
  const auto epochs_log = trainer.fit(splits.train, &splits.test);
  examples::print_eval("test", epochs_log.back().eval);
  moeprune::save_checkpoint(out, *vit, examples::metadata(vit->options, data, splits.mapping),
                            &trainer.optimizer());
  fmt::print("saved {}\n", out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return examples::guarded(run, argc, argv);
}
