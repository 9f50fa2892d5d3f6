#pragma once

// What the experiment harness (sweep.h, compression_compare.h, report.h) needs from a kind of
// model and data: load the fine-tuned model, measure it, fine-tune it, and the few compressions
// whose code is model-typed. vision_task.h implements it for image classification with a V-MoE,
// lm_task.h for causal language modelling with a Mixtral-style model. The harness itself knows
// neither.
#include "cell.h"

#include <moeprune/layers/moe_view.h>
#include <moeprune/train/optimization.h>

#include <torch/nn/module.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace experiments {

/// The post-pruning (or post-compression) fine-tune of one run: its seed and what the method
/// adds. The number of steps and the recipe are the task's.
struct Finetune {
  uint64_t seed = 0;
  /// Distil from the uncompressed fine-tuned model, routers frozen (M-SMoE, MC-SMoE).
  bool distill = false;
  moeprune::StepHook after_backward, after_step;
};

/// One loaded model of a task.
class TaskModel {
 public:
  virtual ~TaskModel() = default;
  virtual torch::nn::Module& module() = 0;
  /// The model's MoE view; with the task's calibration data when `calibrated`.
  virtual std::shared_ptr<moeprune::MoEView> view(bool calibrated) = 0;
  struct Measurement {
    std::optional<double> quality;  // on the test split
    std::optional<double> flops;    // per example (image, token)
  };
  /// The quality metric and FLOPs per example, each when asked for (a task may give more).
  virtual Measurement measure(bool quality, bool flops) = 0;
  /// Median forward time of the task's latency batch, in milliseconds.
  virtual double latency_ms() = 0;
  virtual int64_t stored_parameters() = 0;
  virtual void finetune(const Finetune& run) = 0;
  /// One pass of the task's loss over the calibration data, backward (gradients accumulate):
  /// the importance MC-SMoE prunes its sparse parts by when there is no fine-tune to prune during.
  virtual void calibration_backward() = 0;
  /// Layer Drop and Block Drop of `n` (compression/trimming): the MoE layers or blocks removed.
  virtual std::vector<int64_t> layer_drop(int64_t n) = 0;
  virtual std::vector<int64_t> block_drop(int64_t n) = 0;
};

/// Stored parameters, as every comparison counts them.
inline MetricInfo parameters_metric() {
  MetricInfo m("parameters", "parameters", /*higher_is_better=*/false);
  m.label = "params";
  m.precision = 0;
  m.csv_precision = 0;
  return m;
}

/// Median forward time of the task's latency batch.
inline MetricInfo latency_metric() {
  MetricInfo m("latency_ms", "ms", /*higher_is_better=*/false);
  m.label = "latency ms";
  m.precision = 1;
  m.width = 11;
  m.csv_precision = 3;
  return m;
}

/// A model, its data and what is measured on it.
class ExperimentTask {
 public:
  ExperimentTask() = default;
  // Its TaskModels refer to it: a task stays where it was made.
  ExperimentTask(const ExperimentTask&) = delete;
  ExperimentTask& operator=(const ExperimentTask&) = delete;
  virtual ~ExperimentTask() = default;
  /// Names the model in results and journal keys ("small_vmoe", "lm").
  virtual std::string name() const = 0;
  virtual const TaskMetrics& metrics() const = 0;
  /// A fresh copy of the fine-tuned model, the one every run starts from.
  virtual std::unique_ptr<TaskModel> load_finetuned() const = 0;
  /// The pre-trained model's MoE view (router-change criteria).
  virtual std::shared_ptr<const moeprune::MoEView> pretrained_view() const = 0;
  /// Fine-tuning steps after pruning or compressing; 0: none.
  virtual int64_t post_steps() const = 0;
  /// Whether pruning removes the pruned experts' router rows (tokens choose among the experts
  /// left) or keeps them (a slot routed to a pruned expert gives nothing).
  virtual bool cut_router_rows() const = 0;

  struct Shape {
    int64_t experts = 0;     // per MoE layer
    int64_t moe_layers = 0;  // MoE layers
    int64_t depth = 0;       // blocks or decoder layers, MoE or not
    std::string layer;       // what one of `depth` is called: "block", "layer"
    std::string layers;      // and several, in a Block Drop setting: "blocks", "decoder layers"
  };
  virtual Shape shape() const = 0;

  /// Wording of the tables and plots.
  virtual std::string sweep_title() const = 0;        // "small_vmoe: test top-1 (%)"
  virtual std::string sweep_plot_title() const = 0;   // "small_vmoe on the 4-way ... task"
  virtual std::string compression_title() const = 0;  // the comparison table's first line
  virtual std::string description() const = 0;        // in the comparison plot's title
  virtual std::string latency_axis() const = 0;       // what latency_ms() times
};

}  // namespace experiments
