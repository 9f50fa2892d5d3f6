#pragma once

// MC-SMoE's compression step (Li et al., ICLR 2024, section 3.3; UNITES-Lab/MC-SMoE
// mcsmoe/pruning/losparse.py, after LoSparse, Li et al. 2023): every expert linear W becomes a
// low-rank part plus a sparse part, W = L R + S, with L = U_r sqrt(s_r), R = sqrt(s_r) V_r^T
// from the SVD and S = W - L R. S is then pruned during distillation by PLATON importance
// (an exponential moving average of |theta * grad|), structured by output unit (a whole output
// column of S goes at once), with one threshold over all MoE layers and a cubic schedule down to
// the final density.
#include <moeprune/layers/moe_view.h>

#include <torch/arg.h>

#include <cstdint>
#include <functional>
#include <map>
#include <vector>

namespace moeprune::compression {

/// Factorises the experts of the listed MoE layers (by key; all when empty) at `rank`
/// (ExpertBankImpl::factorize); the banks record it in their state, so checkpoints reload.
void factorize_experts(const MoEView& view, int64_t rank, std::vector<int64_t> keys = {});

struct SparsePruningOptions {
  /// Fraction of the sparse parts' output units kept at the end (MC-SMoE's script: 0.1).
  TORCH_ARG(double, final_density) = 0.1;
  /// EMA factor of the importance |theta * grad| (PLATON's beta1).
  TORCH_ARG(double, beta1) = 0.85;
  /// EMA factor of the uncertainty |I - I_bar|; 1 turns it off (MC-SMoE's default).
  TORCH_ARG(double, beta2) = 1.0;
  /// The schedule's unit w: S stays dense for initial_warmup * w steps and sits at the final
  /// density for the last final_warmup * w steps; in between density falls as a cubic.
  TORCH_ARG(int64_t, warmup_steps) = 10;
  TORCH_ARG(int64_t, initial_warmup) = 1;
  TORCH_ARG(int64_t, final_warmup) = 4;
};

/// Prunes the sparse parts S of a factorised model while it trains. Call after_backward once the
/// gradients are in (before the optimizer step) and after_step after it, e.g. as a trainer's
/// TrainingOptions::after_backward / after_step (optimization.h).
class SparsePruner {
 public:
  /// Prunes the sparse parts of the factorised experts of `view`'s layers.
  explicit SparsePruner(const MoEView& view, SparsePruningOptions options = {});

  /// The density the schedule asks for at `step` of `total` (1 before the pruning starts).
  double density_at(int64_t step, int64_t total) const;
  /// Accumulates the importance of every S entry from the current gradients.
  void after_backward(int64_t step, int64_t total);
  /// Zeroes the least important output units of S down to density_at(step, total).
  void after_step(int64_t step, int64_t total);
  /// Prunes to `density` now (e.g. the final density when training ends early).
  void prune_to(double density);
  /// Fraction of S's output units kept now.
  double density() const;
  /// The density of the last pruning (1 before any).
  double pruned_to() const { return pruned_to_; }

 private:
  struct Part {
    torch::Tensor weight, mask;             // S [E, in, out] and its unit mask [E, out]
    torch::Tensor importance, uncertainty;  // EMAs, S's shape
  };
  std::vector<Part> parts_;
  SparsePruningOptions options_;
  bool seen_gradient_ = false;
  double pruned_to_ = 1.0;
};

/// MC-SMoE without a fine-tune to prune during: `backward` runs a task loss over calibration data
/// and calls backward() (the gradients of the sparse parts S must be zero before it); the
/// importance |S * grad| of that one pass (PLATON with beta1 = 0) then prunes S to `density` at
/// once, and the sparse parts' gradients are cleared.
void prune_sparse_once(const MoEView& view, const std::function<void()>& backward, double density);

}  // namespace moeprune::compression
