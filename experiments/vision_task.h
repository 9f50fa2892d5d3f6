#pragma once

// Image classification with a vision MoE as an experiment task (experiment_task.h): the demo's and
// vmoe_prune_sweep's model, measured by test top-1, fine-tuned with the pruning paper's short
// recipe (post_training_options).
#include "experiment_task.h"
#include "latency.h"
#include "vision_common.h"

#include <moeprune/compression/low_rank.h>

#include <moeprune/models/vision/moe_view.h>
#include <moeprune/models/vision/trimming.h>
#include <moeprune/train/model_cost.h>

namespace experiments {

inline moeprune::VisionTransformer load_model(const std::string& path) {
  return moeprune::load_vision_transformer(path);
}

/// Counts of `wanted` that the model's MoE layers allow (every layer keeps its router's minimum).
inline std::vector<int64_t> feasible_counts(const std::string& checkpoint,
                                            const std::vector<int64_t>& wanted) {
  const auto model = load_model(checkpoint);
  std::vector<int64_t> out;
  for (const auto n : wanted) {
    try {
      moeprune::pruning::ExpertScores zeros;
      const auto view = moeprune::moe_view(model);
      for (const auto& entry : view->layers()) {
        zeros[entry.key] = torch::arange(entry.layer->router().num_experts(), torch::kDouble);
      }
      moeprune::pruning::PruningPlan::same_count(zeros, *view, n).validate(*view);
      out.push_back(n);
    } catch (const c10::Error&) {
    }
  }
  return out;
}

/// One backward pass of the classification loss over the calibration images (gradients
/// accumulate).
inline void classification_loss_backward(moeprune::VisionTransformer& model,
                                         const Calibration& calibration) {
  int64_t begin = 0;
  calibration.data([&](const torch::Tensor& images) {
    const auto labels = calibration.images.labels.narrow(0, begin, images.size(0));
    begin += images.size(0);
    model->loss(model->forward(images), labels).backward();
  });
}

/// MC-SMoE without a fine-tune to prune during (vmoe_compress): the importance of S from one pass
/// of the classification loss over the calibration images, then S pruned to `density` at once.
inline void prune_sparse_once_on_calibration(moeprune::VisionTransformer& model,
                                             const Calibration& calibration, double density) {
  model->train();
  model->zero_grad();
  moeprune::compression::prune_sparse_once(
      *moeprune::moe_view(model), [&] { classification_loss_backward(model, calibration); },
      density);
  model->zero_grad();
}

struct VisionTaskConfig {
  std::string model_name;                  // names the model in results ("small_vmoe")
  std::string description = "4-way task";  // in the plots' titles: "MODEL on the 4-way task"
  std::string pretrained, finetuned;       // checkpoints
  int64_t post_steps = 100;                // post-pruning fine-tuning steps
  int64_t calibration = 512;               // training images data criteria and compressions read
};

/// Test top-1 of a fine-tuned vision MoE after pruning or compressing it.
class VisionClassification : public ExperimentTask {
 public:
  VisionClassification(VisionTaskConfig cfg, Splits splits)
      : cfg_(std::move(cfg)),
        splits_(std::move(splits)),
        calibration_(calibration_set(splits_.train, cfg_.calibration)),
        pretrained_(load_model(cfg_.pretrained)),
        teacher_(load_model(cfg_.finetuned)),
        latency_batch_(moeprune::data::normalize_batch(
            splits_.test.images.narrow(0, 0, std::min<int64_t>(500, splits_.test.size())),
            channel_mean(splits_.train), channel_std(splits_.train))) {
    auto& q = metrics_.quality = MetricInfo("top1", "fraction", /*higher_is_better=*/true);
    q.label = "top-1 (%)";
    q.axis = "test top-1 (%)";
    q.scale = 100;
    q.width = 24;
    q.suffix = "%";
    auto& f = metrics_.flops = MetricInfo("flops_per_image", "FLOPs/image", false);
    f.label = "MFLOP/img";
    f.divisor = 1e6;
    f.csv_precision = 0;
    metrics_.parameters = parameters_metric();
    metrics_.latency = latency_metric();
  }

  std::string name() const override { return cfg_.model_name; }
  const TaskMetrics& metrics() const override { return metrics_; }
  std::unique_ptr<TaskModel> load_finetuned() const override;
  std::shared_ptr<const moeprune::MoEView> pretrained_view() const override {
    return moeprune::moe_view(pretrained_);
  }
  int64_t post_steps() const override { return cfg_.post_steps; }
  bool cut_router_rows() const override { return false; }  // the paper's V-MoE semantics
  Shape shape() const override {
    return {teacher_->options.num_experts(), static_cast<int64_t>(teacher_->moe_layers().size()),
            teacher_->options.depth(), "block", "blocks"};
  }
  std::string sweep_title() const override { return cfg_.model_name + ": test top-1 (%)"; }
  std::string sweep_plot_title() const override {
    return fmt::format("{} on the {}", cfg_.model_name, cfg_.description);
  }
  std::string compression_title() const override {
    return fmt::format(
        "{}: compressions compared (test top-1 without / after {} fine-tuning steps)",
        cfg_.model_name, cfg_.post_steps);
  }
  std::string description() const override { return cfg_.description; }
  std::string latency_axis() const override {
    return "latency of 500 test images (ms, median of 11)";
  }

  const VisionTaskConfig& config() const { return cfg_; }
  const Splits& splits() const { return splits_; }
  const Calibration& calibration() const { return calibration_; }
  moeprune::VisionTransformer teacher() const { return teacher_; }
  /// The first 500 test images, normalised: what latency_ms() times.
  const torch::Tensor& latency_batch() const { return latency_batch_; }
  moeprune::TrainerOptions post_options() const {
    return post_training_options(cfg_.post_steps, splits_.train);
  }

 private:
  VisionTaskConfig cfg_;
  Splits splits_;
  Calibration calibration_;
  moeprune::VisionTransformer pretrained_, teacher_;
  torch::Tensor latency_batch_;
  TaskMetrics metrics_;
};

class VisionTaskModel : public TaskModel {
 public:
  VisionTaskModel(const VisionClassification& task, moeprune::VisionTransformer model)
      : task_(task), model_(std::move(model)) {}

  torch::nn::Module& module() override { return *model_.ptr(); }
  std::shared_ptr<moeprune::MoEView> view(bool calibrated) override {
    return moeprune::moe_view(model_,
                              calibrated ? task_.calibration().data : moeprune::CalibrationData{});
  }
  Measurement measure(bool, bool flops) override {
    // One evaluation gives top-1 and the rows each expert computed, which FLOPs per image read.
    moeprune::Trainer evaluator(model_, task_.post_options());
    const auto eval = evaluator.evaluate(task_.splits().test);
    Measurement m;
    m.quality = eval.top1;
    if (flops) m.flops = moeprune::compression::flops_per_image(model_, eval);
    return m;
  }
  double latency_ms() override { return experiments::latency_ms(model_, task_.latency_batch()); }
  int64_t stored_parameters() override { return moeprune::compression::stored_parameters(model_); }
  void finetune(const Finetune& run) override {
    auto options = task_.post_options().seed(run.seed);
    if (run.distill) {
      options.teacher(task_.teacher());
      model_->set_routers_trainable(false);
    }
    if (run.after_backward) options.after_backward(run.after_backward);
    if (run.after_step) options.after_step(run.after_step);
    moeprune::Trainer(model_, options).fit(task_.splits().train);
  }
  void calibration_backward() override {
    classification_loss_backward(model_, task_.calibration());
  }
  std::vector<int64_t> layer_drop(int64_t n) override {
    return moeprune::compression::layer_drop(model_, task_.calibration().data, n);
  }
  std::vector<int64_t> block_drop(int64_t n) override {
    return moeprune::compression::block_drop(model_, task_.calibration().data, n,
                                             /*consecutive=*/false);
  }

 private:
  const VisionClassification& task_;
  moeprune::VisionTransformer model_;
};

inline std::unique_ptr<TaskModel> VisionClassification::load_finetuned() const {
  return std::make_unique<VisionTaskModel>(*this, load_model(cfg_.finetuned));
}

}  // namespace experiments
