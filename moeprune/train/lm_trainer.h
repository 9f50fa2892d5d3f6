#pragma once

// Trains a language model (lm::CausalLM) on a token stream: next-token cross-entropy plus the MoE
// auxiliary losses, AdamW with linear warm-up and cosine decay, global-norm clipping, optional
// gradient checkpointing, periodic perplexity on a held-out stream, a progress bar and a JSON
// log — the Trainer's pieces, for text. Used for post-pruning fine-tuning.
#include <moeprune/distributed/process_group.h>
#include <moeprune/models/lm/causal_lm.h>

#include <torch/arg.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace moeprune {

struct LMTrainerOptions {
  TORCH_ARG(int64_t, steps) = 100;
  /// Sequences per step, each `context` + 1 tokens cut from the stream at random offsets.
  TORCH_ARG(int64_t, batch_size) = 8;
  TORCH_ARG(int64_t, context) = 256;
  TORCH_ARG(double, lr) = 1e-4;
  TORCH_ARG(double, weight_decay) = 0.0;
  TORCH_ARG(int64_t, warmup_steps) = 10;
  TORCH_ARG(double, final_lr_ratio) = 0.1;
  /// Gradient clipping by global norm (0: off).
  TORCH_ARG(double, clip_norm) = 1.0;
  /// Multiplies the model's auxiliary loss (its MoE layers already weight their terms).
  TORCH_ARG(double, aux_loss_weight) = 1.0;
  TORCH_ARG(bool, gradient_checkpointing) = false;
  /// Perplexity on the evaluation stream every this many steps and at the end (0: only at the
  /// end; no evaluation without a stream).
  TORCH_ARG(int64_t, eval_every) = 0;
  /// Window of the evaluation perplexity (stride = context).
  TORCH_ARG(int64_t, eval_context) = 256;
  /// Seeds the sampling of training windows.
  TORCH_ARG(uint64_t, seed) = 0;
  /// A JSON log (options, per-step loss and lr, evaluations), rewritten at each evaluation.
  TORCH_ARG(std::string, log_path) = "";
  TORCH_ARG(bool, progress) = true;
  /// Knowledge distillation (M-SMoE / MC-SMoE after merging): with a teacher, the loss adds
  /// distill_weight * KL(softmax(teacher / T) || softmax(student / T)) per token, T =
  /// distill_temperature, averaged over the tokens (the Trainer's distillation_kl). The teacher
  /// runs in evaluation mode without gradients on the same windows; it needs the same vocabulary.
  TORCH_ARG(lm::CausalLM, teacher) = nullptr;
  TORCH_ARG(double, distill_weight) = 0.2;
  TORCH_ARG(double, distill_temperature) = 2.0;
  /// Called with (step, steps) after each backward pass (after the data-parallel average, before
  /// clipping) and after each optimizer step: MC-SMoE's SparsePruner hooks in here.
  TORCH_ARG(std::function<void(int64_t, int64_t)>, after_backward);
  TORCH_ARG(std::function<void(int64_t, int64_t)>, after_step);
  /// Data parallelism over the processes of this group (docs/distributed.md): every process
  /// draws the same batch_size * world_size windows per step and trains on its batch_size share,
  /// gradients are averaged over the processes after each backward pass (a bucketed all-reduce;
  /// experts spread with distributed::shard_experts stay where they are) before after_backward
  /// and clipping (by the norm over all processes), the logged losses are the processes' means,
  /// and only rank 0 shows progress and writes the log. Every process evaluates the whole stream.
  TORCH_ARG(std::shared_ptr<distributed::ProcessGroup>, process_group);
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
