#include <moeprune/train/lm_trainer.h>

#include <moeprune/io/atomic_write.h>
#include <moeprune/models/lm/evaluation.h>
#include <moeprune/train/progress_bar.h>
#include <moeprune/train/schedule.h>

#include "train/training_log.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

namespace moeprune {
namespace {

void write_log(const LMTrainerOptions& o, const lm::CausalLM& model, const LMTrainResult& r,
               int64_t processes) {
  if (o.log_path().empty()) {
    return;
  }
  nlohmann::json log = {
      {"model",
       {{"model_type", model->options.model_type()},
        {"layers", model->options.num_layers()},
        {"hidden_size", model->options.hidden_size()}}},
      {"trainer", detail::training_json(o.training(), processes, static_cast<bool>(o.teacher()))},
      {"steps", nlohmann::json::array()},
      {"evals", nlohmann::json::array()},
      {"seconds", r.seconds},
      {"tokens_per_second", r.tokens_per_second}};
  log["trainer"]["steps"] = o.steps();
  log["trainer"]["batch_size"] = o.batch_size();
  log["trainer"]["context"] = o.context();
  log["trainer"]["gradient_checkpointing"] = o.gradient_checkpointing();
  for (const auto& s : r.steps) {
    log["steps"].push_back(
        {{"step", s.step}, {"loss", s.loss}, {"aux_loss", s.aux_loss}, {"lr", s.lr}});
  }
  for (const auto& e : r.evals) {
    log["evals"].push_back(
        {{"step", e.step}, {"perplexity", e.perplexity}, {"mean_nll", e.mean_nll}});
  }
  io::write_file_atomically(o.log_path(), log.dump(2) + "\n");
}

}  // namespace

LMTrainResult train_lm(lm::CausalLM& model, const torch::Tensor& train, const torch::Tensor& eval,
                       const LMTrainerOptions& o) {
  TORCH_CHECK(o.steps() >= 1 && o.batch_size() >= 1 && o.context() >= 1,
              "train_lm: steps, batch_size and context should be >= 1, got ", o.steps(), ", ",
              o.batch_size(), ", ", o.context());
  TORCH_CHECK(train.dim() == 1 && train.scalar_type() == torch::kLong,
              "train_lm: the training stream should be [N] int64 token ids, got ", train.sizes(),
              " ", train.scalar_type());
  TORCH_CHECK(train.size(0) > o.context(), "train_lm: the training stream has ", train.size(0),
              " tokens; a window needs context + 1 = ", o.context() + 1);
  TORCH_CHECK(!eval.defined() || (eval.dim() == 1 && eval.size(0) >= 2),
              "train_lm: the evaluation stream should be [N >= 2] token ids, got ", eval.sizes());
  if (o.teacher()) {
    TORCH_CHECK(o.teacher()->options.vocab_size() == model->options.vocab_size(),
                "train_lm: the teacher's vocabulary has ", o.teacher()->options.vocab_size(),
                " tokens, the model's ", model->options.vocab_size());
    TORCH_CHECK(o.distill_temperature() > 0 && o.distill_weight() >= 0,
                "train_lm: distill_temperature should be > 0 and distill_weight >= 0, got ",
                o.distill_temperature(), " and ", o.distill_weight());
  }
  model->set_gradient_checkpointing(o.gradient_checkpointing());
  const auto device = model->parameters().front().device();
  const auto optimizer = make_optimizer(model->parameters(), o.training());
  OptimizationStep optimize(*optimizer, model->parameters(), model->moe_layers(), o.training(),
                            o.steps(), "train_lm");
  auto gen = at::detail::createCPUGenerator(o.seed());
  // Data parallel: the same windows drawn on every process, each taking its share.
  const int64_t world = optimize.world_size(), rank = optimize.rank();
  LMTrainResult result;
  const auto evaluate = [&](int64_t step) {
    if (!eval.defined()) {
      return;
    }
    const auto p =
        lm::perplexity(model, eval.to(device), lm::PerplexityOptions().context(o.eval_context()));
    result.evals.push_back({step, p.perplexity(), p.mean_nll()});
    if (rank == 0) {
      write_log(o, model, result, world);
    }
  };
  ProgressBar bar(o.steps(), "train", "step", o.progress() && rank == 0);
  const auto start = std::chrono::steady_clock::now();
  const int64_t windows = train.size(0) - o.context();
  for (int64_t step = 0; step < o.steps(); ++step) {
    model->train();
    const auto offsets = torch::randint(windows, {o.batch_size() * world}, gen, torch::kLong)
                             .narrow(0, rank * o.batch_size(), o.batch_size());
    const auto index = offsets.unsqueeze(1) + torch::arange(o.context() + 1, torch::kLong);
    const auto batch = train.index_select(0, index.reshape({-1})).view(index.sizes()).to(device);
    const auto out = model->forward(batch.narrow(1, 0, o.context()));
    const auto logits = out.logits.to(torch::kFloat);
    const auto ce = torch::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}),
                                              batch.narrow(1, 1, o.context()).reshape({-1}));
    auto loss = ce + o.aux_loss_weight() * out.aux_loss.to(torch::kFloat);
    if (o.teacher()) {
      torch::Tensor target;
      {
        torch::NoGradGuard no_grad;
        auto teacher = o.teacher();
        teacher->eval();
        target = teacher->forward(batch.narrow(1, 0, o.context())).logits.to(torch::kFloat);
      }
      loss = loss + o.distill_weight() * distillation_kl(logits.reshape({-1, logits.size(-1)}),
                                                         target.reshape({-1, target.size(-1)}),
                                                         o.distill_temperature());
    }
    // The processes' means of the three, read back once; a non-finite loss is refused before
    // the backward pass and the step.
    const double lr = optimize.lr_at(step);
    const auto values = optimize.apply(step, loss, {ce, out.aux_loss});
    const double ce_value = values[1], aux_value = values[2];
    result.steps.push_back({step, ce_value, aux_value, lr});
    char note[32];
    std::snprintf(note, sizeof(note), "loss %.4f", ce_value);
    bar.update(step + 1, note);
    if (o.eval_every() > 0 && (step + 1) % o.eval_every() == 0 && step + 1 < o.steps()) {
      evaluate(step + 1);
    }
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.tokens_per_second =
      static_cast<double>(o.steps() * o.batch_size() * world * o.context()) / result.seconds;
  bar.finish();
  model->set_gradient_checkpointing(false);
  evaluate(o.steps());
  if (rank == 0) {
    write_log(o, model, result, world);
  }
  return result;
}

}  // namespace moeprune
