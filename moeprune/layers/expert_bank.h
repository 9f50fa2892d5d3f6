#pragma once

#include <moeprune/layers/expert_bank_state.h>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace moeprune {

enum class ExpertActivation {
  kGelu,      ///< exact (erf) GELU
  kGeluTanh,  ///< tanh-approximate GELU (flax's nn.gelu default, used by vmoe)
  kRelu,      ///< HF Switch Transformers' default
  kSilu,      ///< Mixtral's SwiGLU gate
};

enum class ExpertKind {
  kMlp,    ///< w2(act(w1 x + b1)) + b2: the ViT MLP (V-MoE) and Switch's wi/wo
  kGated,  ///< w2(act(w1 x) * (w3 x)): SwiGLU with kSilu (Mixtral)
};

struct ExpertBankOptions {
  ExpertBankOptions(int64_t num_experts, int64_t d_model, int64_t hidden_dim)
      : num_experts_(num_experts), d_model_(d_model), hidden_dim_(hidden_dim) {}
  TORCH_ARG(int64_t, num_experts);
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, hidden_dim);
  TORCH_ARG(ExpertKind, kind) = ExpertKind::kMlp;
  TORCH_ARG(ExpertActivation, activation) = ExpertActivation::kGelu;
  /// Biases b1 and b2 (kMlp only).
  TORCH_ARG(bool, bias) = true;
  /// Low-rank plus sparse experts (MC-SMoE): 0 for plain experts; set by
  /// ExpertBankImpl::factorize.
  TORCH_ARG(int64_t, rank) = 0;
};

/// E experts with stacked parameters, in input-major layout so each expert is x @ w:
/// w1 [E, d, F], b1 [E, F], w2 [E, F, d], b2 [E, d], and for kGated w3 [E, d, F] (up projection;
/// w1 is the gate). A bank can be reduced to a subset of its experts (the others are freed),
/// merged into groups, and factorised: then each linear W is L R + S with w*_left [E, in, rank],
/// w*_right [E, rank, out] and w1/w2/w3 holding the sparse part S, whose output units the
/// buffers w*_mask [E, out] mark as kept (1) or pruned (0).
class ExpertBankImpl : public torch::nn::Cloneable<ExpertBankImpl> {
 public:
  explicit ExpertBankImpl(ExpertBankOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// Runs the experts on an expert-major buffer: rows [R, d], `counts` rows per held expert (in
  /// the bank's order, summing to R). Returns [R, d].
  torch::Tensor forward(const torch::Tensor& rows, const std::vector<int64_t>& counts);

  /// The same with the row offsets on the device: `offsets` [E_held + 1] int64 (a plan's
  /// expert_offsets); rows past offsets[E] are padding (a fixed-size plan) and their outputs are
  /// unspecified. Where grouped_gemm_supported(rows) each linear is one grouped GEMM over the
  /// buffer (at::_grouped_mm, nothing read from the device; the padding rows go to the last
  /// expert), else the per-expert loop of forward() with the counts read back once.
  torch::Tensor forward_offsets(const torch::Tensor& rows, const torch::Tensor& offsets);
  /// Whether forward_offsets runs as grouped GEMMs for `rows` on this bank: a plain bank (not
  /// factorised), rows and weights of one dtype whose row strides are multiples of 16 bytes, and
  /// fp32 on the CPU or bf16 on a CUDA device of compute capability 9.0 or later (torch's
  /// grouped kernel; its other CUDA dtypes loop over groups on the host).
  bool grouped_gemm_supported(const torch::Tensor& rows) const;

  /// Keeps only `experts` (original ids, as numbered when the bank was built), freeing the rest.
  /// Parameters keep their identity (their data shrinks), so modules holding them stay valid.
  void keep_experts(std::vector<int64_t> experts);

  /// Adds experts the bank does not hold (the inverse of keep_experts): `experts` original ids,
  /// `weights` their parameters by name (w1 [n, d, F], b1 [n, F], ...: every parameter of the
  /// bank, stacked in the order of `experts`, its dtype and device). The bank then holds the
  /// union in increasing order; parameters keep their identity (their data grows) and lose their
  /// gradients. Expert parallelism regrows a bank from the experts other processes send. A plain
  /// bank only (not merged, not factorised).
  void add_experts(const std::vector<int64_t>& experts,
                   const std::map<std::string, torch::Tensor>& weights);

  /// Merges experts (M-SMoE): bank expert g becomes the one expert that serves every original id
  /// in groups[g]. Each group names held experts (original ids), no id twice; held experts in no
  /// group are removed. The parameters shrink to one expert per group and start as the group's
  /// first member; the merging code (compression/merging.h) then writes the merged weights.
  void merge_experts(std::vector<std::vector<int64_t>> groups);
  /// Original ids of the experts the bank holds, increasing (for a merged bank: the first member
  /// of each group, in bank order).
  const std::vector<int64_t>& expert_ids() const { return expert_ids_; }
  /// Rewrites every linear as W = L R + S with L = U_r sqrt(s_r), R = sqrt(s_r) V_r^T from the
  /// SVD of W and S = W - L R (MC-SMoE), so the experts compute the same function. S starts
  /// dense, every unit kept. `compute` = false only makes the shapes (for a checkpoint to fill).
  /// Prune and merge before factorising; a factorised bank refuses both.
  void factorize(int64_t rank, bool compute = true);
  /// The sparse parts and their unit masks: (w1, w1_mask), (w2, w2_mask)[, (w3, w3_mask)].
  std::vector<std::pair<torch::Tensor, torch::Tensor>> sparse_parts() const;
  /// Number of parameters; `stored` counts a factorised bank's sparse parts by their kept output
  /// units only (the pruned units are zero and need not be stored).
  int64_t num_parameters(bool stored = true) const;
  /// Floating-point operations (2 per multiply-add) of one row through held expert `local` (bank
  /// order), counting only the kept units of a factorised expert's sparse parts.
  double row_flops(int64_t local) const;

  /// The original ids each held expert serves: {id} per expert, or the group of a merged expert.
  std::vector<std::vector<int64_t>> expert_groups() const;
  /// True once merge_experts has made one bank expert serve several original ids.
  bool is_merged() const { return !groups_.empty(); }
  /// Number of experts held.
  int64_t num_held() const { return static_cast<int64_t>(expert_ids_.size()); }
  /// Where held expert `expert` sits in the bank's stacked weights; an error names an expert the
  /// bank does not hold.
  int64_t position_of(int64_t expert) const;
  /// [E] int64 on `device`: bank index of each original expert, -1 for the removed ones.
  torch::Tensor expert_map(const torch::Device& device = torch::kCPU) const;
  /// True when the bank still holds every expert it was built with.
  bool holds_all() const { return num_held() == options.num_experts(); }

  /// What pruning, merging and factorising did to this bank.
  ExpertBankState state() const;
  /// Rebuilds the shapes `state` describes on a bank that is still plain (keep, merge, then
  /// factorise without computing): a checkpoint's weights then fill them.
  void restore(const ExpertBankState& state);

  ExpertBankOptions options;
  torch::Tensor w1, b1, w2, b2, w3;
  torch::Tensor w1_left, w1_right, w2_left, w2_right, w3_left, w3_right;
  torch::Tensor w1_mask, w2_mask, w3_mask;

 private:
  void register_factors(int64_t rank);
  // Shrinks every parameter to the held experts at bank positions `local`, in that order.
  void select_experts(const std::vector<int64_t>& local);
  // x @ W (+ bias) for held expert e: plain, or L R + S (S by its kept units when not
  // training).
  torch::Tensor linear(const torch::Tensor& x, int64_t e, const torch::Tensor& w,
                       const torch::Tensor& left, const torch::Tensor& right,
                       const torch::Tensor& mask, const torch::Tensor& bias = {}) const;

  std::vector<int64_t> expert_ids_;
  std::vector<std::vector<int64_t>> groups_;  // empty unless merged
  // expert_map() on the device it was last asked for, with the ids and groups it was built from:
  // a layer call then copies nothing from the host (which CUDA graph capture refuses).
  mutable torch::Tensor map_cache_;
  mutable std::vector<int64_t> map_cache_ids_;
  mutable std::vector<std::vector<int64_t>> map_cache_groups_;
};
TORCH_MODULE(ExpertBank);

}  // namespace moeprune
