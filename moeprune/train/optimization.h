#pragma once

// What every training loop here shares, declared once: the options (optimizer, schedule,
// clipping, auxiliary-loss weight, distillation, hooks, data parallelism, log, progress) and the
// optimisation step (the non-finite check before anything changes, learning rate, backward,
// gradient averaging over processes, hooks, clipping, optimizer step). The vision Trainer,
// train_lm and the Switch example (examples/switch_compress.cpp) each compute their model's loss
// and hand it to one OptimizationStep.
#include <moeprune/distributed/process_group.h>
#include <moeprune/layers/moe_layer.h>

#include <torch/arg.h>
#include <torch/optim/optimizer.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace moeprune {

namespace detail {
class GradientAverager;  // csrc/train/data_parallel.h
}

enum class OptimizerKind { kSgd, kAdamW };

/// A callback with (step, total steps) of a training run.
using StepHook = std::function<void(int64_t, int64_t)>;

/// The options every trainer takes (TrainerOptions and LMTrainerOptions hold them through
/// WithTrainingOptions, each with its own defaults).
struct TrainingOptions {
  TORCH_ARG(OptimizerKind, optimizer) = OptimizerKind::kAdamW;
  TORCH_ARG(double, lr) = 1e-3;
  /// SGD momentum (the pruning paper's post-pruning fine-tune: 0.9).
  TORCH_ARG(double, momentum) = 0.9;
  TORCH_ARG(double, weight_decay) = 0.0;
  /// Linear warm-up steps, then cosine decay to lr * final_lr_ratio (1: constant after warm-up).
  TORCH_ARG(int64_t, warmup_steps) = 0;
  TORCH_ARG(double, final_lr_ratio) = 1.0;
  /// Gradient clipping by global norm (0: off).
  TORCH_ARG(double, clip_norm) = 0.0;
  /// Multiplies the model's auxiliary loss (its MoE layers already weight their terms).
  TORCH_ARG(double, aux_loss_weight) = 1.0;
  /// Knowledge distillation (M-SMoE / MC-SMoE after merging), when the trainer is given a
  /// teacher: the loss adds distill_weight * KL(softmax(teacher / T) || softmax(student / T)),
  /// T = distill_temperature (distillation_kl).
  TORCH_ARG(double, distill_weight) = 0.2;
  TORCH_ARG(double, distill_temperature) = 2.0;
  /// Seeds the data order and augmentation (seed the model's initialisation with
  /// torch::manual_seed before building it). On the CPU a run repeats bit for bit.
  TORCH_ARG(uint64_t, seed) = 0;
  /// A JSON log of the run (options, metrics), rewritten as the run goes.
  TORCH_ARG(std::string, log_path) = "";
  /// Progress bar on stderr with throughput and ETA.
  TORCH_ARG(bool, progress) = true;
  /// Called with (step, total steps) after each backward pass (after the data-parallel average,
  /// before clipping: the gradients are in) and after each optimizer step: where
  /// compression::SparsePruner reads importances and applies its masks.
  TORCH_ARG(StepHook, after_backward);
  TORCH_ARG(StepHook, after_step);
  /// Data parallelism over the processes of this group (docs/distributed.md): each process
  /// trains on its share of every step's batch, gradients are averaged over the processes after
  /// each backward pass (a bucketed all-reduce; experts spread with distributed::shard_experts
  /// stay where they are), clipping uses the norm over all processes, and only rank 0 shows
  /// progress and writes the log.
  TORCH_ARG(std::shared_ptr<distributed::ProcessGroup>, process_group);
};

// A setter returning the derived options (so calls chain across both), and the getters.
#define MOEPRUNE_TRAINING_ARG(T, name)   \
  Derived& name(const T& value) {        \
    training_.name(value);               \
    return static_cast<Derived&>(*this); \
  }                                      \
  const T& name() const noexcept {       \
    return training_.name();             \
  }                                      \
  T& name() noexcept {                   \
    return training_.name();             \
  }

/// TrainingOptions inside a trainer's own options struct: `Derived` (which derives from
/// WithTrainingOptions<Derived>) gets every TrainingOptions field, documented there, as its own.
template <typename Derived>
class WithTrainingOptions {
 public:
  MOEPRUNE_TRAINING_ARG(OptimizerKind, optimizer)
  MOEPRUNE_TRAINING_ARG(double, lr)
  MOEPRUNE_TRAINING_ARG(double, momentum)
  MOEPRUNE_TRAINING_ARG(double, weight_decay)
  MOEPRUNE_TRAINING_ARG(int64_t, warmup_steps)
  MOEPRUNE_TRAINING_ARG(double, final_lr_ratio)
  MOEPRUNE_TRAINING_ARG(double, clip_norm)
  MOEPRUNE_TRAINING_ARG(double, aux_loss_weight)
  MOEPRUNE_TRAINING_ARG(double, distill_weight)
  MOEPRUNE_TRAINING_ARG(double, distill_temperature)
  MOEPRUNE_TRAINING_ARG(uint64_t, seed)
  MOEPRUNE_TRAINING_ARG(std::string, log_path)
  MOEPRUNE_TRAINING_ARG(bool, progress)
  MOEPRUNE_TRAINING_ARG(StepHook, after_backward)
  MOEPRUNE_TRAINING_ARG(StepHook, after_step)
  MOEPRUNE_TRAINING_ARG(std::shared_ptr<distributed::ProcessGroup>, process_group)

  /// The shared options, as OptimizationStep takes them.
  const TrainingOptions& training() const noexcept { return training_; }

 private:
  TrainingOptions training_;
};

#undef MOEPRUNE_TRAINING_ARG

/// The optimizer `options` names (SGD with momentum, or AdamW) over `params`, at options.lr().
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::vector<torch::Tensor>& params,
                                                        const TrainingOptions& options);

/// One optimisation step of a training run of `total_steps`, the same for every model.
class OptimizationStep {
 public:
  /// `optimizer` over the model's trainable `params`; `moe_layers`: the model's MoE layers
  /// (those spread over processes keep their experts' gradients local under data parallelism).
  /// `who` begins every error ("Trainer", "train_lm").
  OptimizationStep(torch::optim::Optimizer& optimizer, std::vector<torch::Tensor> params,
                   const std::vector<std::pair<int64_t, MoELayer>>& moe_layers,
                   TrainingOptions options, int64_t total_steps, std::string who);
  ~OptimizationStep();
  OptimizationStep(const OptimizationStep&) = delete;
  OptimizationStep& operator=(const OptimizationStep&) = delete;

  /// Step `step` on `loss` (a scalar with its graph): reads back the loss and `metrics` (one
  /// transfer; under data parallelism their means over the processes, in one all-reduce) and
  /// refuses a non-finite loss on every process before anything changes, so the weights stay
  /// those after the last finite step; then sets the learning rate, backward, averages the
  /// gradients over the processes, after_backward, clips, steps the optimizer, after_step.
  /// Returns {loss, metrics...} as read.
  std::vector<double> apply(int64_t step, const torch::Tensor& loss,
                            const std::vector<torch::Tensor>& metrics = {});

  /// The learning rate at `step` (warmup_cosine_lr over the run).
  double lr_at(int64_t step) const;
  int64_t world_size() const { return world_; }
  int64_t rank() const { return rank_; }
  /// The means of `values` over the processes (the values themselves on one process).
  std::vector<double> mean(const std::vector<double>& values) const;

 private:
  torch::optim::Optimizer& optimizer_;
  std::vector<torch::Tensor> params_;
  TrainingOptions options_;
  int64_t total_;
  std::string who_;
  std::unique_ptr<detail::GradientAverager> averager_;
  int64_t world_ = 1, rank_ = 0;
};

/// The distillation term: KL(softmax(teacher / T) || softmax(student / T)) summed over classes and
/// averaged over the rows (MC-SMoE's KLDivLoss(reduction="batchmean"), without a T^2 factor).
torch::Tensor distillation_kl(const torch::Tensor& student_logits,
                              const torch::Tensor& teacher_logits, double temperature);

}  // namespace moeprune
