#include <moeprune/train/trainer.h>

#include <moeprune/io/atomic_write.h>
#include <moeprune/train/progress_bar.h>
#include <moeprune/train/schedule.h>

#include "train/training_log.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace moeprune {
namespace {

nlohmann::json to_json(const EvalResult& r) {
  nlohmann::json routing = nlohmann::json::array();
  for (const auto& l : r.routing) {
    routing.push_back({{"block", l.block},
                       {"rows_per_expert", l.rows_per_expert},
                       {"dropped_fraction", l.dropped_fraction},
                       {"unrouted_fraction", l.unrouted_fraction}});
  }
  return {{"top1", r.top1},     {"top5", r.top5},       {"loss", r.loss},
          {"images", r.images}, {"seconds", r.seconds}, {"images_per_second", r.images_per_second},
          {"routing", routing}};
}

}  // namespace

Trainer::Trainer(VisionTransformer model, TrainerOptions options)
    : model_(std::move(model)), options_(std::move(options)) {
  TORCH_CHECK(options_.batch_size() >= 1, "Trainer: batch_size should be >= 1");
  TORCH_CHECK(options_.lr() > 0, "Trainer: lr should be > 0, got ", options_.lr());
  if (options_.teacher()) {
    const auto& t = options_.teacher()->options;
    const auto& m = model_->options;
    TORCH_CHECK(t.num_classes() == m.num_classes(), "Trainer: the teacher has ", t.num_classes(),
                " classes, the model ", m.num_classes());
    TORCH_CHECK(t.image_size() == m.image_size() && t.channels() == m.channels(),
                "Trainer: the teacher reads ", t.channels(), "x", t.image_size(), "x",
                t.image_size(), " images, the model ", m.channels(), "x", m.image_size(), "x",
                m.image_size());
    TORCH_CHECK(options_.distill_temperature() > 0,
                "Trainer: distill_temperature should be > 0, got ", options_.distill_temperature());
    TORCH_CHECK(options_.distill_weight() >= 0, "Trainer: distill_weight should be >= 0, got ",
                options_.distill_weight());
  }
  optimizer_ = make_optimizer(model_->parameters(), options_.training());
}

double Trainer::lr_at(int64_t step, int64_t total) const {
  return warmup_cosine_lr(step, total, options_.lr(), options_.warmup_steps(),
                          options_.final_lr_ratio());
}

std::vector<EpochLog> Trainer::fit(const data::ImageDataset& train,
                                   const data::ImageDataset* test) {
  const int64_t n = train.size();
  TORCH_CHECK(n > 0, "Trainer: the training set is empty");
  TORCH_CHECK(train.num_classes <= model_->options.num_classes(), "Trainer: the data has ",
              train.num_classes, " classes but the model's head has ",
              model_->options.num_classes());
  // Data parallel: each process takes its batch_size share of every step's batch (the steps
  // see world * batch_size images), the same permutation on every process (one seed).
  const int64_t world =
      options_.process_group() ? options_.process_group()->world_size() : int64_t{1};
  const int64_t rank = options_.process_group() ? options_.process_group()->rank() : int64_t{0};
  const bool progress = options_.progress() && rank == 0;
  // Full batches only, so every step routes groups of the configured size.
  // A training set smaller than one batch is trained on whole.
  const int64_t batch = std::min(options_.batch_size(), n / world);
  TORCH_CHECK(batch >= 1, "Trainer: ", n, " images cannot give each of ", world, " processes one");
  const int64_t steps_per_epoch = n / (batch * world);
  int64_t total = steps_per_epoch * options_.epochs();
  if (options_.max_steps() > 0) {
    total = std::min(total, options_.max_steps());
  }
  OptimizationStep optimize(*optimizer_, model_->parameters(), model_->moe_layers(),
                            options_.training(), total, "Trainer");
  auto generator = at::detail::createCPUGenerator(options_.seed());
  const auto device = model_->parameters().front().device();
  std::vector<EpochLog> epochs;
  int64_t step = 0;
  for (int64_t epoch = 0; epoch < options_.epochs() && step < total; ++epoch) {
    model_->train();
    const auto order = torch::randperm(n, generator, torch::kLong);
    const int64_t steps = std::min(steps_per_epoch, total - step);
    ProgressBar bar(steps * batch * world,
                    "epoch " + std::to_string(epoch + 1) + "/" + std::to_string(options_.epochs()),
                    "img", progress);
    double loss_sum = 0.0;
    int64_t correct = 0, seen = 0;
    double lr = 0.0;
    for (int64_t s = 0; s < steps; ++s, ++step) {
      const auto index = order.narrow(0, (s * world + rank) * batch, batch);
      auto images = train.images.index_select(0, index);
      if (options_.crop_padding() > 0) {
        images = data::random_crop(images, options_.crop_padding(), generator);
      }
      if (options_.flip()) {
        images = data::random_flip(images, generator);
      }
      // The batch goes where the model is (a model moved to CUDA trains there).
      const auto x = data::normalize_batch(images, options_.mean(), options_.std()).to(device);
      const auto y = train.labels.index_select(0, index).to(device);

      lr = optimize.lr_at(step);
      const auto out = model_->forward(x);
      const auto task_loss = model_->loss(out, y);
      auto loss = task_loss + options_.aux_loss_weight() * out.aux_loss;
      if (options_.teacher()) {
        loss = loss + options_.distill_weight() * distillation_loss(out.logits, x);
      }
      optimize.apply(step, loss);

      const double l = task_loss.item<double>();
      loss_sum += l * static_cast<double>(y.size(0));
      correct += out.logits.argmax(1).eq(y).sum().item<int64_t>();
      seen += y.size(0);
      char note[96];
      std::snprintf(note, sizeof(note), "loss %.4f  acc %.2f%%  lr %.2e", loss_sum / seen,
                    100.0 * correct / seen, lr);
      bar.update(seen * world, note);  // rank 0's figures; the epoch log has every process's
    }
    if (world > 1) {
      // The epoch's figures over every process.
      const auto means =
          optimize.mean({loss_sum, static_cast<double>(correct), static_cast<double>(seen)});
      loss_sum = means[0] * static_cast<double>(world);
      correct = std::llround(means[1] * world);
      seen = std::llround(means[2] * world);
    }
    EpochLog log;
    log.epoch = epoch + 1;
    log.steps = steps;
    log.train_loss = loss_sum / static_cast<double>(seen);
    log.train_top1 = static_cast<double>(correct) / static_cast<double>(seen);
    log.lr = lr;
    log.seconds = bar.elapsed_seconds();
    log.images_per_second = static_cast<double>(seen) / log.seconds;
    bar.finish();
    if (test != nullptr) {
      log.eval = evaluate(*test);
      if (progress) {
        std::fprintf(stderr, "epoch %ld: %s\n", static_cast<long>(log.epoch),
                     format_eval(log.eval).c_str());
      }
    }
    epochs.push_back(log);
    if (rank == 0) {
      write_log(epochs, world);
    }
  }
  return epochs;
}

torch::Tensor Trainer::distillation_loss(const torch::Tensor& logits, const torch::Tensor& images) {
  auto teacher = options_.teacher();
  torch::Tensor target;
  {
    torch::NoGradGuard no_grad;
    const bool was_training = teacher->is_training();
    teacher->eval();
    target = teacher->forward(images).logits;
    if (was_training) {
      teacher->train();
    }
  }
  return distillation_kl(logits, target, options_.distill_temperature());
}

EvalResult Trainer::evaluate(const data::ImageDataset& data) {
  torch::NoGradGuard no_grad;
  const bool was_training = model_->is_training();
  model_->eval();
  EvalResult r;
  const int64_t n = data.size();
  const auto device = model_->parameters().front().device();
  const auto start = std::chrono::steady_clock::now();
  int64_t top1 = 0, top5 = 0;
  double loss_sum = 0.0;
  std::vector<std::vector<int64_t>> rows;
  std::vector<double> used(0), kept(0), unrouted(0);
  int64_t tokens = 0;
  const auto layers = model_->moe_layers();
  for (int64_t begin = 0; begin < n; begin += options_.eval_batch_size()) {
    const int64_t b = std::min(options_.eval_batch_size(), n - begin);
    const auto x =
        data::normalize_batch(data.images.narrow(0, begin, b), options_.mean(), options_.std())
            .to(device);
    const auto y = data.labels.narrow(0, begin, b).to(device);
    const auto out = model_->forward(x);
    loss_sum +=
        torch::nll_loss(out.logits.log_softmax(-1), y, {}, at::Reduction::Sum).item<double>();
    const int64_t k = std::min<int64_t>(5, out.logits.size(1));
    const auto top = std::get<1>(out.logits.topk(k, 1));
    top1 += top.select(1, 0).eq(y).sum().item<int64_t>();
    top5 += top.eq(y.unsqueeze(1)).any(1).sum().item<int64_t>();
    rows.resize(out.plans.size());
    used.resize(out.plans.size(), 0.0);
    kept.resize(out.plans.size(), 0.0);
    unrouted.resize(out.plans.size(), 0.0);
    for (size_t i = 0; i < out.plans.size(); ++i) {
      const auto& plan = out.plans[i];
      const auto counts = plan.counts();
      rows[i].resize(counts.size(), 0);
      for (size_t e = 0; e < counts.size(); ++e) {
        rows[i][e] += counts[e];
      }
      used[i] += static_cast<double>(plan.expert_index.ge(0).sum().item<int64_t>());
      kept[i] += static_cast<double>(plan.num_kept_rows());
      unrouted[i] += plan.unrouted_fraction() * static_cast<double>(plan.num_tokens());
    }
    tokens += out.plans.empty() ? 0 : out.plans.front().num_tokens();
  }
  r.images = n;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.images_per_second = static_cast<double>(n) / r.seconds;
  r.top1 = n ? static_cast<double>(top1) / static_cast<double>(n) : 0.0;
  r.top5 = n ? static_cast<double>(top5) / static_cast<double>(n) : 0.0;
  r.loss = n ? loss_sum / static_cast<double>(n) : 0.0;
  for (size_t i = 0; i < rows.size(); ++i) {
    LayerRoutingStats s;
    s.block = layers[i].first;
    s.rows_per_expert = rows[i];
    s.dropped_fraction = used[i] > 0 ? (used[i] - kept[i]) / used[i] : 0.0;
    s.unrouted_fraction = tokens > 0 ? unrouted[i] / static_cast<double>(tokens) : 0.0;
    r.routing.push_back(s);
  }
  if (was_training) {
    model_->train();
  }
  return r;
}

void Trainer::write_log(const std::vector<EpochLog>& epochs, int64_t processes) const {
  if (options_.log_path().empty()) {
    return;
  }
  nlohmann::json log = {{"model", nlohmann::json::parse(model_->config_json())},
                        {"trainer", detail::training_json(options_.training(), processes,
                                                          static_cast<bool>(options_.teacher()))},
                        {"epochs", nlohmann::json::array()}};
  log["trainer"]["epochs"] = options_.epochs();
  log["trainer"]["batch_size"] = options_.batch_size();
  for (const auto& e : epochs) {
    log["epochs"].push_back({{"epoch", e.epoch},
                             {"steps", e.steps},
                             {"train_loss", e.train_loss},
                             {"train_top1", e.train_top1},
                             {"lr", e.lr},
                             {"seconds", e.seconds},
                             {"images_per_second", e.images_per_second},
                             {"eval", to_json(e.eval)}});
  }
  io::write_file_atomically(options_.log_path(), log.dump(2) + "\n");
}

std::string format_eval(const EvalResult& r) {
  char buf[160];
  std::snprintf(buf, sizeof(buf), "top-1 %.2f%%  top-5 %.2f%%  loss %.4f  (%ld images, %.0f img/s)",
                100.0 * r.top1, 100.0 * r.top5, r.loss, static_cast<long>(r.images),
                r.images_per_second);
  return buf;
}

}  // namespace moeprune
