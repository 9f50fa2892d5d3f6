// Pre-trains a small V-MoE (or E3-MoE, expert-choice or dense ViT) on Fashion-MNIST or CIFAR
// and saves a checkpoint.
#include "vision_common.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{
      "Pre-trains a vision MoE on Fashion-MNIST (default) or CIFAR and saves a checkpoint."};
  experiments::DataArgs data;
  experiments::add_data_options(app, data);
  std::string model = "small_vmoe";
  app.add_option("--model", model, "Model preset")
      ->check(CLI::IsMember({"small_vmoe", "small_e3moe", "small_expert_choice", "small_dense"}))
      ->capture_default_str();
  experiments::TrainArgs train;
  train.epochs = 3;
  train.lr = 2e-3;
  train.warmup = 200;
  train.out = "checkpoints/vmoe_pretrained.pt";
  experiments::add_train_options(app, train);
  CLI11_PARSE(app, argc, argv);

  experiments::set_up_process(train.threads);
  const auto splits = experiments::load_splits(data);
  torch::manual_seed(train.seed);
  const auto options = experiments::fit_to_data(
      moeprune::VisionTransformerOptions::small(model, splits.train.num_classes), splits.train);
  moeprune::VisionTransformer vit(options);
  int64_t params = 0;
  for (const auto& p : vit->parameters()) {
    params += p.numel();
  }
  fmt::print("{} on {}: {} training / {} test images, {} classes, {} parameters\n", model,
             data.data, splits.train.size(), splits.test.size(), splits.train.num_classes, params);
  std::fflush(stdout);
  moeprune::Trainer trainer(vit, experiments::trainer_options(train, splits.train));
  const auto epochs_log = trainer.fit(splits.train, &splits.test);
  experiments::print_eval("test", epochs_log.back().eval);
  fmt::print("training {:.0f} img/s, {:.0f} s\n", epochs_log.back().images_per_second,
             std::accumulate(epochs_log.begin(), epochs_log.end(), 0.0,
                             [](double s, const moeprune::EpochLog& e) { return s + e.seconds; }));
  moeprune::save_vision_transformer(
      train.out, vit, experiments::task_metadata(data, splits.mapping), &trainer.optimizer());
  fmt::print("saved {}\n", train.out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return experiments::guarded(run, argc, argv);
}
