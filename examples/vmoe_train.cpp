// Pre-trains a small V-MoE (or E3-MoE, expert-choice or dense ViT) on Fashion-MNIST or CIFAR
// and saves a checkpoint.
#include "vision_common.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{
      "Pre-trains a vision MoE on Fashion-MNIST (default) or CIFAR and saves a checkpoint."};
  examples::DataArgs data;
  examples::add_data_options(app, data);
  std::string model = "small_vmoe", out = "checkpoints/vmoe_pretrained.pt", log;
  moeprune::TrainerOptions t;
  int64_t epochs = 3, batch = 128, warmup = 200, threads = 0;
  double lr = 2e-3, wd = 1e-4, clip = 1.0;
  std::string optimizer = "adamw";
  uint64_t seed = 0;
  app.add_option("--model", model, "Model preset")
      ->check(CLI::IsMember({"small_vmoe", "small_e3moe", "small_expert_choice", "small_dense"}))
      ->capture_default_str();
  app.add_option("--epochs", epochs, "Epochs")->capture_default_str();
  app.add_option("--batch-size", batch, "Batch size")->capture_default_str();
  app.add_option("--lr", lr, "Peak learning rate")->capture_default_str();
  app.add_option("--optimizer", optimizer, "adamw or sgd")
      ->check(CLI::IsMember({"adamw", "sgd"}))
      ->capture_default_str();
  app.add_option("--weight-decay", wd, "Weight decay")->capture_default_str();
  app.add_option("--warmup", warmup, "Linear warm-up steps")->capture_default_str();
  app.add_option("--clip", clip, "Gradient clipping by global norm (0: off)")
      ->capture_default_str();
  app.add_option("--seed", seed, "Seed (initialisation, shuffling, router noise)")
      ->capture_default_str();
  app.add_option("--threads", threads, "Torch threads (0: torch's default)");
  app.add_option("--out", out, "Checkpoint to write")->capture_default_str();
  app.add_option("--log", log, "JSON log of the run");
  CLI11_PARSE(app, argc, argv);

  examples::keep_freed_memory();
  if (threads > 0) {
    torch::set_num_threads(static_cast<int>(threads));
  }
  const auto splits = examples::load_splits(data);
  torch::manual_seed(seed);
  const auto options = examples::fit_to_data(
      moeprune::VisionTransformerOptions::small(model, splits.train.num_classes), splits.train);
  moeprune::VisionTransformer vit(options);
  int64_t params = 0;
  for (const auto& p : vit->parameters()) {
    params += p.numel();
  }
  fmt::print("{} on {}: {} training / {} test images, {} classes, {} parameters\n", model,
             data.data, splits.train.size(), splits.test.size(), splits.train.num_classes, params);
  std::fflush(stdout);
  moeprune::Trainer trainer(vit,
                            t.epochs(epochs)
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
  fmt::print("training {:.0f} img/s, {:.0f} s\n", epochs_log.back().images_per_second,
             std::accumulate(epochs_log.begin(), epochs_log.end(), 0.0,
                             [](double s, const moeprune::EpochLog& e) { return s + e.seconds; }));
  moeprune::save_checkpoint(out, *vit, examples::metadata(options, data, splits.mapping),
                            &trainer.optimizer());
  fmt::print("saved {}\n", out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return examples::guarded(run, argc, argv);
}
