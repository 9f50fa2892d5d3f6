#pragma once

// The dense linear layers of a model (attention, shared experts, dense MLPs: everything a
// compression may target beyond the routed experts), and a capture of their inputs while the
// model runs. LibTorch modules have no forward hooks, so the capture watches ATen calls through
// a thread-local RecordFunction callback (the mechanism the profiler uses) and recognises a
// layer by its weight: torch::nn::functional::linear (LinearImpl::forward) runs
// addmm(bias, x, W.t()) for a 2-D input with a bias and matmul(x, W.t()) otherwise; a direct
// at::linear(x, W, b) is recognised too, once (not again in the calls it makes).
#include <torch/nn/modules/linear.h>
#include <torch/types.h>

#include <ATen/record_function.h>

#include <cstdint>
#include <exception>
#include <functional>
#include <string>
#include <vector>

namespace moeprune {
namespace linear_capture_detail {
struct Access;
}

/// What a dense linear layer does in its model.
enum class LinearRole {
  kAttention,     ///< an attention projection (q, k, v, o; MLA's low-rank ones)
  kSharedExpert,  ///< a shared expert's projection (every token, beside the routed experts)
  kDenseMLP,      ///< a dense (non-MoE) block's MLP projection
};
/// "attention", "shared_experts", "dense"
std::string to_string(LinearRole role);

/// One dense linear layer of a model.
struct LinearEntry {
  /// The block it sits in: the key its block's MoE layer has (MoELayerEntry::key) where the block
  /// has one, so that a walk in block order interleaves the two.
  int64_t block = 0;
  /// Its module path ("model.layers.3.self_attn.q_proj"): a checkpoint stores its weight as
  /// name + ".weight".
  std::string name;
  LinearRole role = LinearRole::kAttention;
  torch::nn::Linear linear{nullptr};
};

/// Called with the index of a captured layer (in the list the capture was given) and its input
/// tokens [T, in] (flattened over the leading dimensions; valid during the call only).
using LinearInputVisitor = std::function<void(size_t index, const torch::Tensor& input)>;

/// Calls `visit` with the inputs of the given linear layers, on this thread, while it lives
/// (RAII). Operations `visit` runs are not watched. An exception `visit` throws is kept (ATen
/// would swallow it) and rethrown by rethrow_if_failed(); once one is kept, later calls are
/// ignored. One capture at a time per thread.
class LinearInputCapture {
 public:
  LinearInputCapture(const std::vector<torch::nn::Linear>& linears, LinearInputVisitor visit);
  ~LinearInputCapture();
  LinearInputCapture(const LinearInputCapture&) = delete;
  LinearInputCapture& operator=(const LinearInputCapture&) = delete;

  /// The calls each layer received so far.
  const std::vector<int64_t>& calls() const { return calls_; }
  /// Rethrows the first exception `visit` threw, if any.
  void rethrow_if_failed() const;

 private:
  friend struct linear_capture_detail::Access;
  // The layer whose weight `weight` is (itself, or transposed when `transposed`), or -1.
  int64_t match(const torch::Tensor& weight, bool transposed) const;
  void deliver(size_t index, const torch::Tensor& input);

  std::vector<torch::Tensor> weights_;
  LinearInputVisitor visit_;
  std::vector<int64_t> calls_;
  std::exception_ptr error_;
  at::CallbackHandle handle_ = 0;
};

}  // namespace moeprune
