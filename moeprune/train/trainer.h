#pragma once

#include <moeprune/distributed/process_group.h>
#include <moeprune/models/vision/vision_transformer.h>
#include <moeprune/train/image_dataset.h>

#include <torch/arg.h>
#include <torch/optim/optimizer.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace moeprune {

enum class OptimizerKind { kSgd, kAdamW };

/// A callback with (step, total steps) of a training run.
using StepHook = std::function<void(int64_t, int64_t)>;

struct TrainerOptions {
  TORCH_ARG(int64_t, epochs) = 1;
  /// Stop after this many steps (0: run all epochs). The schedule spans the actual run.
  TORCH_ARG(int64_t, max_steps) = 0;
  TORCH_ARG(int64_t, batch_size) = 128;
  TORCH_ARG(int64_t, eval_batch_size) = 500;
  TORCH_ARG(OptimizerKind, optimizer) = OptimizerKind::kAdamW;
  TORCH_ARG(double, lr) = 1e-3;
  /// SGD momentum (the pruning paper's post-pruning fine-tune: 0.9).
  TORCH_ARG(double, momentum) = 0.9;
  TORCH_ARG(double, weight_decay) = 1e-4;
  /// Linear warm-up steps, then cosine decay to lr * final_lr_ratio.
  TORCH_ARG(int64_t, warmup_steps) = 100;
  TORCH_ARG(double, final_lr_ratio) = 0.0;
  /// Gradient clipping by global norm (0: off).
  TORCH_ARG(double, clip_norm) = 1.0;
  /// Multiplies the model's auxiliary loss (the MoE layers already weight their terms).
  TORCH_ARG(double, aux_loss_weight) = 1.0;
  /// Data augmentation: random crop with this padding, and left-right flips.
  TORCH_ARG(int64_t, crop_padding) = 0;
  TORCH_ARG(bool, flip) = false;
  /// Per-channel normalisation of the uint8 images.
  TORCH_ARG(std::vector<double>, mean) = std::vector<double>{0.5};
  TORCH_ARG(std::vector<double>, std) = std::vector<double>{0.5};
  /// Seeds the shuffling and augmentation (seed the model's initialisation and router noise
  /// with torch::manual_seed before building it). On the CPU a run repeats bit for bit.
  TORCH_ARG(uint64_t, seed) = 0;
  /// A JSON log of the run (options, per-epoch metrics), rewritten after every epoch.
  TORCH_ARG(std::string, log_path) = "";
  /// Progress bar on stderr with throughput and ETA.
  TORCH_ARG(bool, progress) = true;
  /// Knowledge distillation (M-SMoE / MC-SMoE after merging): with a teacher, the loss is
  /// CE + distill_weight * KL(softmax(teacher / T) || softmax(student / T)), T =
  /// distill_temperature, averaged over the batch (MC-SMoE's KLDivLoss(batchmean), no T^2
  /// factor). The teacher runs in evaluation mode without gradients; it must see the same
  /// labels (same head size).
  TORCH_ARG(VisionTransformer, teacher) = nullptr;
  TORCH_ARG(double, distill_weight) = 0.2;
  TORCH_ARG(double, distill_temperature) = 2.0;
  /// Called with (step, total steps) after each backward pass, before clipping and the optimizer
  /// step (gradients are in), and after each optimizer step: where compression::SparsePruner
  /// reads importances and applies its masks.
  TORCH_ARG(StepHook, after_backward);
  TORCH_ARG(StepHook, after_step);
  /// Data parallelism over the processes of this group (docs/distributed.md): each process
  /// trains on its batch_size share of every step's batch (the same permutation everywhere),
  /// gradients are averaged over the processes after each backward pass (a bucketed all-reduce;
  /// the experts sharded with distributed::shard_experts stay where they are), clipping uses the
  /// norm over all processes, and only rank 0 shows progress and writes the log. Every process
  /// must call fit() and evaluate() alike; evaluate() runs the whole set on each.
  TORCH_ARG(std::shared_ptr<distributed::ProcessGroup>, process_group);
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
/// and a JSON log.
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
  void write_log(const std::vector<EpochLog>& epochs) const;
  // The distillation term for a batch: KL from the teacher's tempered softmax.
  torch::Tensor distillation_loss(const torch::Tensor& logits, const torch::Tensor& images);

  VisionTransformer model_;
  TrainerOptions options_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
};

/// The distillation term: KL(softmax(teacher / T) || softmax(student / T)) summed over classes and
/// averaged over the batch (MC-SMoE's KLDivLoss(reduction="batchmean"), without a T^2 factor).
torch::Tensor distillation_kl(const torch::Tensor& student_logits,
                              const torch::Tensor& teacher_logits, double temperature);

/// A one-line summary of an evaluation ("top-1 88.10%  top-5 99.71%  loss 0.3312 ...").
std::string format_eval(const EvalResult& result);

}  // namespace moeprune
