#pragma once

// What the V-MoE example programs share: choosing and loading the data, the task's labels,
// the checkpoint metadata, and printing an evaluation.
#include "program.h"

#include <moeprune/moeprune.h>

#include <fmt/format.h>

#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include <numeric>
#include <string>
#include <vector>

namespace experiments {

struct DataArgs {
  std::string data = "fashion-mnist";
  std::string dir;
  std::string labels;  // "0,0,1,..." one new label per class, -1 drops a class
  int64_t train_limit = 0;
};

inline void add_data_options(CLI::App& app, DataArgs& args) {
  app.add_option("--data", args.data, "Data set")
      ->check(CLI::IsMember({"fashion-mnist", "cifar10", "cifar100"}))
      ->capture_default_str();
  app.add_option("--data-dir", args.dir,
                 "Folder of the data files (default: Debian's /usr/share/datasets/fashion-mnist; "
                 "for CIFAR the cifar-10-batches-bin or cifar-100-binary folder)");
  app.add_option("--labels", args.labels,
                 "Task labels: one new label per class, comma-separated, -1 drops the class "
                 "(e.g. 0,1,0,1,0,2,0,2,1,2)");
  app.add_option("--train-limit", args.train_limit,
                 "Use only the first N training images (0: all)");
}

inline std::vector<double> channel_mean(const moeprune::data::ImageDataset& d) {
  return d.images.size(1) == 1 ? std::vector<double>{0.286}
                               : std::vector<double>{0.491, 0.482, 0.447};
}
inline std::vector<double> channel_std(const moeprune::data::ImageDataset& d) {
  return d.images.size(1) == 1 ? std::vector<double>{0.353}
                               : std::vector<double>{0.247, 0.243, 0.261};
}

/// The training options vmoe_train and vmoe_finetune share; the defaults differ per program.
struct TrainArgs {
  int64_t epochs = 1, batch = 128, warmup = 100, threads = 0;
  double lr = 1e-3, weight_decay = 1e-4, clip = 1.0;
  std::string optimizer = "adamw", out, log;
  uint64_t seed = 0;
};

inline void add_train_options(CLI::App& app, TrainArgs& a) {
  app.add_option("--epochs", a.epochs, "Epochs")->capture_default_str();
  app.add_option("--batch-size", a.batch, "Batch size")->capture_default_str();
  app.add_option("--lr", a.lr, "Peak learning rate")->capture_default_str();
  app.add_option("--optimizer", a.optimizer, "adamw, or sgd (momentum 0.9)")
      ->check(CLI::IsMember({"adamw", "sgd"}))
      ->capture_default_str();
  app.add_option("--weight-decay", a.weight_decay, "Weight decay")->capture_default_str();
  app.add_option("--warmup", a.warmup, "Linear warm-up steps")->capture_default_str();
  app.add_option("--clip", a.clip, "Gradient clipping by global norm (0: off)")
      ->capture_default_str();
  app.add_option("--seed", a.seed, "Seed (initialisation, shuffling, router noise)")
      ->capture_default_str();
  app.add_option("--threads", a.threads, "Torch threads (0: torch's default)");
  app.add_option("--out", a.out, "Checkpoint to write")->capture_default_str();
  app.add_option("--log", a.log, "JSON log of the run");
}

inline moeprune::TrainerOptions trainer_options(const TrainArgs& a,
                                                const moeprune::data::ImageDataset& train) {
  return moeprune::TrainerOptions()
      .epochs(a.epochs)
      .batch_size(a.batch)
      .lr(a.lr)
      .optimizer(a.optimizer == "sgd" ? moeprune::OptimizerKind::kSgd
                                      : moeprune::OptimizerKind::kAdamW)
      .weight_decay(a.weight_decay)
      .warmup_steps(a.warmup)
      .clip_norm(a.clip)
      .seed(a.seed)
      .mean(channel_mean(train))
      .std(channel_std(train))
      .log_path(a.log);
}

struct Splits {
  moeprune::data::ImageDataset train, test;
  std::vector<int64_t> mapping;
};

inline Splits load_splits(const DataArgs& args, std::vector<int64_t> mapping = {}) {
  Splits s;
  if (args.data == "fashion-mnist") {
    const auto dir = args.dir.empty() ? std::string(moeprune::data::kFashionMnistDir) : args.dir;
    s.train = moeprune::data::load_fashion_mnist(dir, true);
    s.test = moeprune::data::load_fashion_mnist(dir, false);
  } else {
    TORCH_CHECK(!args.dir.empty(), "--data-dir is required for ", args.data);
    const int64_t classes = args.data == "cifar10" ? 10 : 100;
    s.train = moeprune::data::load_cifar(args.dir, classes, true);
    s.test = moeprune::data::load_cifar(args.dir, classes, false);
  }
  if (!args.labels.empty()) {
    mapping = moeprune::data::parse_label_mapping(args.labels);
  }
  if (!mapping.empty()) {
    s.train = moeprune::data::remap_labels(s.train, mapping);
    s.test = moeprune::data::remap_labels(s.test, mapping);
  }
  s.mapping = mapping;
  if (args.train_limit > 0 && args.train_limit < s.train.size()) {
    s.train = s.train.subset(torch::arange(args.train_limit));
  }
  return s;
}

/// The small presets are for 28x28 grey images; CIFAR needs 32x32 colour.
inline moeprune::VisionTransformerOptions fit_to_data(moeprune::VisionTransformerOptions o,
                                                      const moeprune::data::ImageDataset& d) {
  return o.image_size(d.images.size(2)).channels(d.images.size(1)).num_classes(d.num_classes);
}

/// The example programs' metadata besides the model (moeprune::save_vision_transformer adds it):
/// the data set and the task's label mapping.
inline std::string task_metadata(const DataArgs& args, const std::vector<int64_t>& mapping) {
  nlohmann::json j = {{"data", args.data}, {"labels", mapping}};
  return j.dump();
}

struct Metadata {
  moeprune::VisionTransformerOptions options;
  std::string data;
  std::vector<int64_t> labels;
};

inline Metadata read_metadata(const std::string& checkpoint) {
  const auto j = nlohmann::json::parse(moeprune::read_checkpoint_metadata(checkpoint));
  return {moeprune::VisionTransformerOptions::from_json(
              moeprune::read_vision_transformer_config(checkpoint)),
          j.value("data", "fashion-mnist"), j.value("labels", std::vector<int64_t>{})};
}

/// The first `count` training images (with their labels) and the calibration data criteria and
/// compressions read: those images normalised, in batches of 256.
struct Calibration {
  moeprune::data::ImageDataset images;
  moeprune::pruning::CalibrationData data;
};

inline Calibration calibration_set(const moeprune::data::ImageDataset& train, int64_t count) {
  Calibration c;
  c.images = train.subset(torch::arange(std::min(count, train.size())));
  c.data = [images = c.images.images, mean = channel_mean(train),
            stdev = channel_std(train)](const std::function<void(const torch::Tensor&)>& visit) {
    for (int64_t b = 0; b < images.size(0); b += 256) {
      visit(moeprune::data::normalize_batch(
          images.narrow(0, b, std::min<int64_t>(256, images.size(0) - b)), mean, stdev));
    }
  };
  return c;
}

/// The short fine-tune after pruning or compressing, the same for every method compared (the
/// pruning paper's recipe): SGD with momentum 0.9, lr 0.01, warm-up over a tenth of the steps,
/// cosine decay, clipping at global norm 10, no weight decay; exactly `steps` steps of batch 128,
/// over as many epochs as that takes.
inline moeprune::TrainerOptions post_training_options(int64_t steps,
                                                      const moeprune::data::ImageDataset& train) {
  const int64_t batch = 128;
  const int64_t per_epoch = std::max<int64_t>(1, train.size() / std::min(batch, train.size()));
  return moeprune::TrainerOptions()
      .epochs(std::max<int64_t>(1, (steps + per_epoch - 1) / per_epoch))
      .max_steps(steps)
      .batch_size(batch)
      .optimizer(moeprune::OptimizerKind::kSgd)
      .lr(0.01)
      .weight_decay(0)
      .warmup_steps(std::min<int64_t>(steps / 10, 100))
      .clip_norm(10)
      .mean(channel_mean(train))
      .std(channel_std(train))
      .progress(false);
}

inline void print_eval(const std::string& title, const moeprune::EvalResult& r) {
  fmt::print("{}: {}\n", title, moeprune::format_eval(r));
  for (const auto& l : r.routing) {
    const int64_t total = std::max<int64_t>(
        1, std::accumulate(l.rows_per_expert.begin(), l.rows_per_expert.end(), int64_t{0}));
    std::string load;
    for (const auto c : l.rows_per_expert) {
      load += fmt::format("{:5.1f}", 100.0 * static_cast<double>(c) / static_cast<double>(total));
    }
    fmt::print("  MoE block {}: load % per expert [{} ]  dropped {:.2f}%  no expert {:.2f}%\n",
               l.block, load, 100.0 * l.dropped_fraction, 100.0 * l.unrouted_fraction);
  }
}

}  // namespace experiments
