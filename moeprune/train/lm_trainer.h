#pragma once

// Trains a language model (lm::CausalLM) on a token stream: next-token cross-entropy plus the MoE
// auxiliary losses, AdamW with linear warm-up and cosine decay, global-norm clipping, optional
// gradient checkpointing, periodic perplexity on a held-out stream, a progress bar and a JSON
// log; each step is an OptimizationStep, as the vision Trainer's. Used for post-pruning
// fine-tuning.
#include <moeprune/distributed/process_group.h>
#include <moeprune/models/lm/causal_lm.h>
#include <moeprune/train/optimization.h>

#include <torch/arg.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace moeprune {

/// train_lm's options: TrainingOptions (optimizer, schedule, clipping, distillation, hooks, data
/// parallelism, log, progress; optimization.h) with train_lm's defaults, and what is particular
/// to text.
struct LMTrainerOptions : WithTrainingOptions<LMTrainerOptions> {
  /// AdamW at 1e-4 without weight decay, 10 warm-up steps then cosine decay to 0.1 lr, clipping
  /// at 1.
  LMTrainerOptions() { lr(1e-4).warmup_steps(10).final_lr_ratio(0.1).clip_norm(1.0); }

  TORCH_ARG(int64_t, steps) = 100;
  /// Sequences per step on each process, each `context` + 1 tokens cut from the stream at
  /// random offsets (under data parallelism every process draws the same batch_size *
  /// processes windows and trains on its share).
  TORCH_ARG(int64_t, batch_size) = 8;
  TORCH_ARG(int64_t, context) = 256;
  TORCH_ARG(bool, gradient_checkpointing) = false;
  /// Perplexity on the evaluation stream every this many steps and at the end (0: only at the
  /// end; no evaluation without a stream). Every process evaluates the whole stream.
  TORCH_ARG(int64_t, eval_every) = 0;
  /// Window of the evaluation perplexity (stride = context).
  TORCH_ARG(int64_t, eval_context) = 256;
  /// The distillation teacher (distill_weight, distill_temperature): distillation_kl per token,
  /// averaged over the tokens. It runs in evaluation mode without gradients on the same windows;
  /// it needs the same vocabulary.
  TORCH_ARG(lm::CausalLM, teacher) = nullptr;
};

struct LMStepLog {
  int64_t step = 0;
  double loss = 0.0;  ///< next-token cross-entropy (nats per token)
  double aux_loss = 0.0;
  double lr = 0.0;
};

struct LMEvalLog {
  int64_t step = 0;
  double perplexity = 0.0;
  double mean_nll = 0.0;
};

struct LMTrainResult {
  std::vector<LMStepLog> steps;
  std::vector<LMEvalLog> evals;
  double seconds = 0.0;
  double tokens_per_second = 0.0;  ///< training tokens of all processes per second
};

/// Trains `model` in place on `train` [N] (int64 token ids, N > context); evaluates on `eval`
/// when it is defined.
LMTrainResult train_lm(lm::CausalLM& model, const torch::Tensor& train, const torch::Tensor& eval,
                       const LMTrainerOptions& options = {});

}  // namespace moeprune
