// Fine-tunes a pre-trained checkpoint on a downstream task (a new label set built from the same
// images) with a new classification head, and saves the fine-tuned checkpoint.
#include "vision_common.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"Fine-tunes a pre-trained vision MoE on a downstream task with a new head."};
  experiments::DataArgs data;
  experiments::add_data_options(app, data);
  std::string pretrained;
  double capacity_factor = 1.5;
  app.add_option("--pretrained", pretrained, "Pre-trained checkpoint (from vmoe_train)")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--capacity-factor", capacity_factor,
                 "MoE capacity factor while fine-tuning and evaluating (V-MoE: 1.5)")
      ->capture_default_str();
  // The pruning paper's fine-tuning recipe: SGD, momentum 0.9, warm-up + cosine, clip at 10.
  experiments::TrainArgs train;
  train.lr = 0.01;
  train.optimizer = "sgd";
  train.weight_decay = 0.0;
  train.clip = 10.0;
  train.out = "checkpoints/vmoe_finetuned.pt";
  experiments::add_train_options(app, train);
  CLI11_PARSE(app, argc, argv);

  experiments::set_up_process(train.threads);
  const auto meta = experiments::read_metadata(pretrained);
  // Without --labels: the checkpoint's own task (post-pruning fine-tuning).
  const auto splits = experiments::load_splits(data, meta.labels);
  torch::manual_seed(train.seed);
  auto vit = moeprune::load_vision_transformer(pretrained);
  // A new task gets a new head; the same task (post-pruning fine-tuning) keeps the trained one.
  const bool same_task =
      meta.labels == splits.mapping && meta.options.num_classes() == splits.train.num_classes;
  if (!same_task) {
    vit->replace_head(splits.train.num_classes);
  }
  vit->set_capacity_factor(capacity_factor);
  fmt::print("fine-tuning {} on {} classes ({} training images, {} head)\n", pretrained,
             splits.train.num_classes, splits.train.size(), same_task ? "its trained" : "a new");
  std::fflush(stdout);

  moeprune::Trainer trainer(vit, experiments::trainer_options(train, splits.train));
  const auto epochs_log = trainer.fit(splits.train, &splits.test);
  experiments::print_eval("test", epochs_log.back().eval);
  moeprune::save_vision_transformer(
      train.out, vit, experiments::task_metadata(data, splits.mapping), &trainer.optimizer());
  fmt::print("saved {}\n", train.out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return experiments::guarded(run, argc, argv);
}
