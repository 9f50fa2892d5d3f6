#include <moeprune/train/optimization.h>

#include <moeprune/train/schedule.h>

#include "train/data_parallel.h"

#include <torch/torch.h>

#include <cmath>

namespace moeprune {

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::vector<torch::Tensor>& params,
                                                        const TrainingOptions& o) {
  TORCH_CHECK(o.lr() >= 0, "the learning rate should be >= 0, got ", o.lr());
  if (o.optimizer() == OptimizerKind::kSgd) {
    return std::make_unique<torch::optim::SGD>(
        params,
        torch::optim::SGDOptions(o.lr()).momentum(o.momentum()).weight_decay(o.weight_decay()));
  }
  return std::make_unique<torch::optim::AdamW>(
      params, torch::optim::AdamWOptions(o.lr()).weight_decay(o.weight_decay()));
}

OptimizationStep::OptimizationStep(torch::optim::Optimizer& optimizer,
                                   std::vector<torch::Tensor> params,
                                   const std::vector<std::pair<int64_t, MoELayer>>& moe_layers,
                                   TrainingOptions options, int64_t total_steps, std::string who)
    : optimizer_(optimizer),
      params_(std::move(params)),
      options_(std::move(options)),
      total_(total_steps),
      who_(std::move(who)) {
  TORCH_CHECK(total_ >= 1, who_, ": a run needs at least one step, got ", total_);
  if (options_.process_group()) {
    const auto& group = *options_.process_group();
    world_ = group.world_size();
    rank_ = group.rank();
    averager_ = detail::GradientAverager::for_model(group, params_, moe_layers);
  }
}

OptimizationStep::~OptimizationStep() = default;

double OptimizationStep::lr_at(int64_t step) const {
  return warmup_cosine_lr(step, total_, options_.lr(), options_.warmup_steps(),
                          options_.final_lr_ratio());
}

std::vector<double> OptimizationStep::mean(const std::vector<double>& values) const {
  return averager_ ? averager_->mean(values) : values;
}

std::vector<double> OptimizationStep::apply(int64_t step, const torch::Tensor& loss,
                                            const std::vector<torch::Tensor>& metrics) {
  TORCH_CHECK(loss.defined() && loss.numel() == 1, who_, ": the loss should be a scalar, got ",
              loss.defined() ? loss.sizes() : at::IntArrayRef{});
  // One read-back for the loss and the metrics (each would synchronise on a GPU), and on every
  // process the same means, so all stop alike on a non-finite loss.
  std::vector<torch::Tensor> read{loss.detach().reshape({}).to(torch::kDouble)};
  for (const auto& m : metrics) read.push_back(m.detach().reshape({}).to(torch::kDouble));
  const auto values_tensor = torch::stack(read).to(torch::kCPU);
  auto values = mean(std::vector<double>(values_tensor.data_ptr<double>(),
                                         values_tensor.data_ptr<double>() + values_tensor.numel()));
  const double lr = lr_at(step);
  // Before backward and the step: a NaN never reaches the weights.
  TORCH_CHECK(std::isfinite(values[0]), who_, ": the loss became ", values[0], " at step ", step,
              " (learning rate ", lr,
              "; lower it); the model keeps the weights from before this step");
  for (auto& group : optimizer_.param_groups()) {
    group.options().set_lr(lr);
  }
  optimizer_.zero_grad();
  loss.backward();
  if (averager_) {
    averager_->average();
  }
  if (options_.after_backward()) {
    options_.after_backward()(step, total_);
  }
  if (options_.clip_norm() > 0) {
    if (averager_) {
      averager_->clip(options_.clip_norm());
    } else {
      torch::nn::utils::clip_grad_norm_(params_, options_.clip_norm());
    }
  }
  optimizer_.step();
  if (options_.after_step()) {
    options_.after_step()(step, total_);
  }
  return values;
}

torch::Tensor distillation_kl(const torch::Tensor& student_logits,
                              const torch::Tensor& teacher_logits, double temperature) {
  TORCH_CHECK(student_logits.sizes() == teacher_logits.sizes(), "distillation_kl: student logits ",
              student_logits.sizes(), " and teacher logits ", teacher_logits.sizes(), " differ");
  TORCH_CHECK(temperature > 0, "distillation_kl: temperature should be > 0, got ", temperature);
  const auto log_student = (student_logits / temperature).log_softmax(-1);
  const auto log_teacher = (teacher_logits / temperature).log_softmax(-1);
  return (log_teacher.exp() * (log_teacher - log_student)).sum(-1).mean();
}

}  // namespace moeprune
