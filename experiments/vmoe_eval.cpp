// Evaluates a checkpoint on the test split of its task: top-1, top-5, loss, throughput and the
// routing statistics of every MoE layer.
#include "vision_common.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"Evaluates a vision MoE checkpoint on the test split of its task."};
  experiments::DataArgs data;
  experiments::add_data_options(app, data);
  std::string checkpoint;
  double capacity_factor = 0.0;
  int64_t batch = 500, threads = 0;
  app.add_option("--checkpoint", checkpoint, "Checkpoint to evaluate")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--capacity-factor", capacity_factor,
                 "MoE capacity factor (default: the checkpoint's)");
  app.add_option("--batch-size", batch, "Evaluation batch size")->capture_default_str();
  app.add_option("--threads", threads, "Torch threads (0: torch's default)");
  CLI11_PARSE(app, argc, argv);

  experiments::set_up_process(threads);
  const auto meta = experiments::read_metadata(checkpoint);
  if (data.labels.empty() && !meta.labels.empty()) {
    data.labels.clear();
    for (size_t i = 0; i < meta.labels.size(); ++i) {
      data.labels += (i ? "," : "") + std::to_string(meta.labels[i]);
    }
  }
  const auto splits = experiments::load_splits(data);
  auto vit = moeprune::load_vision_transformer(checkpoint);
  if (capacity_factor > 0) {
    vit->set_capacity_factor(capacity_factor);
  }
  moeprune::Trainer trainer(vit, moeprune::TrainerOptions()
                                     .eval_batch_size(batch)
                                     .mean(experiments::channel_mean(splits.test))
                                     .std(experiments::channel_std(splits.test)));
  experiments::print_eval(checkpoint, trainer.evaluate(splits.test));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return experiments::guarded(run, argc, argv);
}
