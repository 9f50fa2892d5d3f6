#pragma once

#include <moeprune/distributed/process_group.h>
#include <moeprune/models/vision/vision_transformer.h>
#include <moeprune/train/image_dataset.h>
#include <moeprune/train/optimization.h>

#include <torch/arg.h>
#include <torch/optim/optimizer.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace moeprune {

/// The vision Trainer's options: TrainingOptions (optimizer, schedule, clipping, distillation,
/// hooks, data parallelism, log, progress; optimization.h) with the Trainer's defaults, and what
/// is particular to images.
struct TrainerOptions : WithTrainingOptions<TrainerOptions> {
  /// AdamW at 1e-3, weight decay 1e-4, 100 warm-up steps then cosine decay to 0, clipping at 1.
  TrainerOptions() { weight_decay(1e-4).warmup_steps(100).final_lr_ratio(0.0).clip_norm(1.0); }

  TORCH_ARG(int64_t, epochs) = 1;
  /// Stop after this many steps (0: run all epochs). The schedule spans the actual run.
  TORCH_ARG(int64_t, max_steps) = 0;
  /// Images per step on each process (the step's batch is batch_size * processes: each process
  /// trains on its share of the same permutation).
  TORCH_ARG(int64_t, batch_size) = 128;
  TORCH_ARG(int64_t, eval_batch_size) = 500;
  /// Data augmentation: random crop with this padding, and left-right flips.
  TORCH_ARG(int64_t, crop_padding) = 0;
  TORCH_ARG(bool, flip) = false;
  /// Per-channel normalisation of the uint8 images.
  TORCH_ARG(std::vector<double>, mean) = std::vector<double>{0.5};
  TORCH_ARG(std::vector<double>, std) = std::vector<double>{0.5};
  /// The distillation teacher (distill_weight, distill_temperature): the loss is CE +
  /// distill_weight * distillation_kl averaged over the batch. It runs in evaluation mode without
  /// gradients and must see the same labels (same head size).
  TORCH_ARG(VisionTransformer, teacher) = nullptr;
};

/// Load and drops of one MoE layer over an evaluation.
struct LayerRoutingStats {
  int64_t block = 0;
  std::vector<int64_t> rows_per_expert;  ///< over the whole evaluation, bank order
  double dropped_fraction = 0.0;         ///< of used slots
  double unrouted_fraction = 0.0;        ///< of tokens
};

struct EvalResult {
  double top1 = 0.0, top5 = 0.0, loss = 0.0;
  int64_t images = 0;
  double seconds = 0.0;
  double images_per_second = 0.0;
  std::vector<LayerRoutingStats> routing;
};

struct EpochLog {
  int64_t epoch = 0, steps = 0;
  double train_loss = 0.0, train_top1 = 0.0, lr = 0.0, seconds = 0.0, images_per_second = 0.0;
  EvalResult eval;
};

/// Trains and evaluates a VisionTransformer: SGD with momentum or AdamW, linear warm-up and
/// cosine decay, global-norm clipping, auxiliary losses, top-1/top-5 evaluation, a progress bar
/// and a JSON log (each step is an OptimizationStep). Under data parallelism every process must
/// call fit() and evaluate() alike; evaluate() runs the whole set on each.
class Trainer {
 public:
  Trainer(VisionTransformer model, TrainerOptions options);

  /// Trains on `train`; evaluates on `test` after every epoch when given.
  std::vector<EpochLog> fit(const data::ImageDataset& train,
                            const data::ImageDataset* test = nullptr);
  /// Top-1, top-5, mean loss and routing statistics on `data` (evaluation mode, no grad).
  EvalResult evaluate(const data::ImageDataset& data);

  /// The learning rate at `step` of a run of `total` steps.
  double lr_at(int64_t step, int64_t total) const;

  torch::optim::Optimizer& optimizer() { return *optimizer_; }
  VisionTransformer& model() { return model_; }
  const TrainerOptions& options() const { return options_; }

 private:
  void write_log(const std::vector<EpochLog>& epochs, int64_t processes) const;
  // The distillation term for a batch: KL from the teacher's tempered softmax.
  torch::Tensor distillation_loss(const torch::Tensor& logits, const torch::Tensor& images);

  VisionTransformer model_;
  TrainerOptions options_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
};

/// A one-line summary of an evaluation ("top-1 88.10%  top-5 99.71%  loss 0.3312 ...").
std::string format_eval(const EvalResult& result);

}  // namespace moeprune
