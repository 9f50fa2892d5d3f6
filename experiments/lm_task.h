#pragma once

// Causal language modelling as an experiment task (experiment_task.h): a Mixtral-style Hugging
// Face folder, measured by bits per byte on one language's test split, fine-tuned with train_lm.
#include "experiment_task.h"
#include "latency.h"
#include "lm_data.h"

#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/model_cost.h>
#include <moeprune/models/lm/moe_view.h>
#include <moeprune/models/lm/trimming.h>
#include <moeprune/train/lm_trainer.h>

namespace experiments {

struct LMTaskConfig {
  std::string pretrained, finetuned;  // checkpoint folders
  int64_t calibration_windows = 32, context = 256;
  /// Remove the pruned experts' router rows, so tokens choose their top-k among the experts left
  /// and renormalise over them (Mixtral's routing after Expert Drop, REAP and `moeprune prune
  /// --router cut`); false keeps the rows (Chowdhury et al.'s V-MoE semantics: a slot routed to
  /// a pruned expert contributes nothing).
  bool cut_router_rows = true;
  /// The post-pruning fine-tune (steps 0: none); its seed is the run's.
  moeprune::LMTrainerOptions post;
};

/// Bits per byte on one language's test split of a fine-tuned language MoE after pruning or
/// compressing it.
class CausalLanguageModeling : public ExperimentTask {
 public:
  CausalLanguageModeling(LMTaskConfig cfg, FortuneTexts texts)
      : cfg_(std::move(cfg)),
        texts_(std::move(texts)),
        calibration_(lm_calibration(texts_.train, cfg_.calibration_windows, cfg_.context)),
        // MC-SMoE's one-shot importance needs next tokens: windows one token longer.
        loss_windows_(even_windows(texts_.train, cfg_.calibration_windows, cfg_.context + 1)),
        cost_ids_(even_windows(texts_.test, 4, cfg_.context)),
        pretrained_(moeprune::lm::load_causal_lm(cfg_.pretrained)),
        teacher_(moeprune::lm::load_causal_lm(cfg_.finetuned)) {
    auto& q = metrics_.quality = MetricInfo("bits_per_byte", "bits/byte", false);
    q.label = "bits per byte";
    q.axis = "test bits per byte (lower is better)";
    q.precision = 3;
    q.width = 22;
    q.suffix = " bits/byte";
    auto& f = metrics_.flops = MetricInfo("flops_per_token", "FLOPs/token", false);
    f.label = "MFLOP/token";
    f.divisor = 1e6;
    f.precision = 3;
    f.width = 11;
    f.csv_precision = 0;
    metrics_.parameters = parameters_metric();
    metrics_.latency = latency_metric();
  }

  std::string name() const override { return "lm"; }
  const TaskMetrics& metrics() const override { return metrics_; }
  std::unique_ptr<TaskModel> load_finetuned() const override;
  std::shared_ptr<const moeprune::MoEView> pretrained_view() const override {
    return moeprune::lm::moe_view(pretrained_);
  }
  int64_t post_steps() const override { return cfg_.post.steps(); }
  bool cut_router_rows() const override { return cfg_.cut_router_rows; }
  Shape shape() const override {
    return {teacher_->options.moe()->num_experts(),
            static_cast<int64_t>(teacher_->moe_layers().size()), teacher_->options.num_layers(),
            "layer", "decoder layers"};
  }
  std::string sweep_title() const override {
    return fmt::format("bits per byte on the {} test split", texts_.language_name);
  }
  std::string sweep_plot_title() const override {
    return fmt::format("Mixtral-style byte LM fine-tuned on {} fortunes", texts_.language_name);
  }
  std::string compression_title() const override {
    return fmt::format(
        "compressions compared on the {} test split (bits per byte without / after {} "
        "fine-tuning steps; lower is better)",
        texts_.language_name, cfg_.post.steps());
  }
  std::string description() const override { return texts_.language_name + " fortunes"; }
  std::string latency_axis() const override {
    return fmt::format("latency of {} x {} test tokens (ms, median of 11)", cost_ids_.size(0),
                       cfg_.context);
  }

  const LMTaskConfig& config() const { return cfg_; }
  const FortuneTexts& texts() const { return texts_; }
  const moeprune::CalibrationData& calibration() const { return calibration_; }
  /// [windows, context + 1] training windows for the next-token loss.
  const torch::Tensor& loss_windows() const { return loss_windows_; }
  /// [4, context] test windows FLOPs per token and latency are measured on.
  const torch::Tensor& cost_ids() const { return cost_ids_; }
  moeprune::lm::CausalLM teacher() const { return teacher_; }

 private:
  LMTaskConfig cfg_;
  FortuneTexts texts_;
  moeprune::CalibrationData calibration_;
  torch::Tensor loss_windows_, cost_ids_;
  moeprune::lm::CausalLM pretrained_, teacher_;
  TaskMetrics metrics_;
};

class LMTaskModel : public TaskModel {
 public:
  LMTaskModel(const CausalLanguageModeling& task, moeprune::lm::CausalLM model)
      : task_(task), model_(std::move(model)) {}

  torch::nn::Module& module() override { return *model_.ptr(); }
  std::shared_ptr<moeprune::MoEView> view(bool calibrated) override {
    return moeprune::lm::moe_view(model_,
                                  calibrated ? task_.calibration() : moeprune::CalibrationData{});
  }
  Measurement measure(bool quality, bool flops) override {
    Measurement m;
    if (quality) {
      m.quality = bits_per_byte(model_, task_.texts().test, task_.config().context);
    }
    if (flops) m.flops = moeprune::compression::flops_per_token(model_, task_.cost_ids());
    return m;
  }
  double latency_ms() override { return experiments::latency_ms(model_, task_.cost_ids()); }
  int64_t stored_parameters() override { return moeprune::compression::stored_parameters(model_); }
  void finetune(const Finetune& run) override {
    auto post = task_.config().post;
    post.seed(run.seed).progress(false);
    if (run.distill) {
      for (auto& [index, layer] : model_->moe_layers()) {
        layer->router().router_weight().set_requires_grad(false);
      }
      post.teacher(task_.teacher());
    }
    if (run.after_backward) post.after_backward(run.after_backward);
    if (run.after_step) post.after_step(run.after_step);
    moeprune::train_lm(model_, task_.texts().train, {}, post);
  }
  void calibration_backward() override {
    const auto& windows = task_.loss_windows();
    const auto context = task_.config().context;
    for (int64_t b = 0; b < windows.size(0); b += 8) {
      const auto w = windows.narrow(0, b, std::min<int64_t>(8, windows.size(0) - b));
      const auto logits = model_->forward(w.narrow(1, 0, context)).logits;
      torch::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}),
                                w.narrow(1, 1, context).reshape({-1}))
          .backward();
    }
  }
  std::vector<int64_t> layer_drop(int64_t n) override {
    return moeprune::compression::layer_drop(model_, task_.calibration(), n);
  }
  std::vector<int64_t> block_drop(int64_t n) override {
    return moeprune::compression::block_drop(model_, task_.calibration(), n);
  }

 private:
  const CausalLanguageModeling& task_;
  moeprune::lm::CausalLM model_;
};

inline std::unique_ptr<TaskModel> CausalLanguageModeling::load_finetuned() const {
  return std::make_unique<LMTaskModel>(*this, moeprune::lm::load_causal_lm(cfg_.finetuned));
}

}  // namespace experiments
