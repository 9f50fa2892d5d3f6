#pragma once

// What the language demo's programs share: the fortune texts as token streams (every language for
// pre-training, one language as the downstream task), the small Mixtral-style model, bits per
// byte, calibration windows, and causal language modelling as an experiment task
// (experiment_task.h) measured by bits per byte.
#include "compression_compare.h"
#include "program.h"

#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/evaluation.h>
#include <moeprune/models/lm/model_cost.h>
#include <moeprune/models/lm/moe_view.h>
#include <moeprune/models/lm/trimming.h>
#include <moeprune/train/lm_trainer.h>
#include <moeprune/train/text_corpus.h>

#include <algorithm>
#include <string>
#include <vector>

namespace experiments {

struct LMTask {
  std::string language;  // the downstream language's code
  std::string language_name;
  /// Every language's training fortunes, language after language (pre-training).
  torch::Tensor pretrain;
  /// The downstream language's training, validation and test streams.
  torch::Tensor train, validation, test;
  /// Fortunes and bytes of each language's training split, for the log.
  std::vector<std::string> summary;
};

inline int64_t byte_count(const std::vector<std::string>& docs) {
  int64_t n = 0;
  for (const auto& d : docs) n += static_cast<int64_t>(d.size());
  return n;
}

/// The fortunes of every language (split by position, 10% validation and 10% test from the end
/// of every file) with `language` as the downstream task.
inline LMTask load_lm_task(const std::string& language) {
  namespace data = moeprune::data;
  LMTask task;
  task.language = language;
  std::vector<std::string> all;
  for (const auto& l : data::fortune_languages()) {
    const auto s = data::load_fortunes(l.code);
    all.insert(all.end(), s.train.begin(), s.train.end());
    task.summary.push_back(fmt::format("{} {} fortunes ({:.2f} MB)", l.name, s.train.size(),
                                       static_cast<double>(byte_count(s.train)) / 1e6));
    if (l.code == language) {
      task.language_name = l.name;
      task.train = data::byte_tokens(s.train);
      task.validation = data::byte_tokens(s.validation);
      task.test = data::byte_tokens(s.test);
    }
  }
  TORCH_CHECK(task.train.defined(), "unknown language '", language, "'");
  task.pretrain = data::byte_tokens(all);
  return task;
}

/// The demo's model: Mixtral's architecture at a size that pre-trains in minutes on two cores.
/// 4 decoder layers of width 128 (4 query heads and 2 key/value heads of 32), each with a MoE
/// block of 8 SwiGLU experts of width 256, top-2 renormalised, dropless; byte vocabulary.
/// The load-balancing loss weight is 0.01 (Mixtral's config has 0.001 for 8 experts at scale;
/// on this little data 0.001 let a few experts take most tokens).
inline moeprune::lm::CausalLMOptions lm_demo_options() {
  auto moe = moeprune::MoELayerOptions::preset("top_k_gated", 128, 256, 8);
  moe.aux_loss_weights(moeprune::functional::AuxLossWeights().load_balance(0.01));
  return moeprune::lm::CausalLMOptions(moeprune::data::kByteVocabSize, 128, 4,
                                       moeprune::lm::AttentionOptions(128, 4, 2, 32))
      .model_type("mixtral")
      .max_position_embeddings(1024)
      .moe_layers(std::vector<bool>(4, true))
      .moe(moe);
}

/// Bits per byte of `stream` under `model`: windows of `context` tokens, each token scored once
/// (lm::perplexity), end-of-text marks' bits included, over the bytes scored.
inline double bits_per_byte(moeprune::lm::CausalLM& model, const torch::Tensor& stream,
                            int64_t context) {
  const auto r =
      moeprune::lm::perplexity(model, stream, moeprune::lm::PerplexityOptions().context(context));
  return moeprune::data::bits_per_byte(r.nll_sum, stream.slice(0, 1));
}

/// `windows` windows of `context` tokens spread evenly over `stream`, [windows, context].
inline torch::Tensor even_windows(const torch::Tensor& stream, int64_t windows, int64_t context) {
  TORCH_CHECK(stream.size(0) >= windows * context, "even_windows: ", stream.size(0),
              " tokens are too few for ", windows, " windows of ", context);
  const int64_t step = (stream.size(0) - context) / std::max<int64_t>(1, windows - 1);
  const auto offsets = torch::arange(windows, torch::kLong) * step;
  const auto index = offsets.unsqueeze(1) + torch::arange(context, torch::kLong);
  return stream.index_select(0, index.reshape({-1})).view({windows, context});
}

/// Calibration data for the MoE view: `windows` evenly spread over `stream`, batches of 8.
inline moeprune::CalibrationData lm_calibration(const torch::Tensor& stream, int64_t windows,
                                                int64_t context) {
  const auto all = even_windows(stream, windows, context);
  return [all](const std::function<void(const torch::Tensor&)>& visit) {
    for (int64_t b = 0; b < all.size(0); b += 8) {
      visit(all.narrow(0, b, std::min<int64_t>(8, all.size(0) - b)));
    }
  };
}

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
  CausalLanguageModeling(LMTaskConfig cfg, LMTask texts)
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
  const LMTask& texts() const { return texts_; }
  const moeprune::CalibrationData& calibration() const { return calibration_; }
  /// [windows, context + 1] training windows for the next-token loss.
  const torch::Tensor& loss_windows() const { return loss_windows_; }
  /// [4, context] test windows FLOPs per token and latency are measured on.
  const torch::Tensor& cost_ids() const { return cost_ids_; }
  moeprune::lm::CausalLM teacher() const { return teacher_; }

 private:
  LMTaskConfig cfg_;
  LMTask texts_;
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
