#pragma once

// Pruning one linear layer from the statistics of its calibration inputs, with the relative
// reconstruction error the reports give: shared by the experts' (expert_sparsity.cpp) and the
// dense layers' (linear_sparsity.cpp) drivers.
#include <moeprune/compression/expert_quantization.h>
#include <moeprune/compression/expert_sparsity.h>
#include <moeprune/compression/linear_sparsity.h>
#include <moeprune/compression/model_sparsity.h>

#include <torch/torch.h>

#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <utility>

namespace moeprune::compression::sparsity_detail {

// Refuses a MoE layer whose experts cannot be sparsified (factorised, served over processes, or
// not floating point), naming it.
void check_expert_layer(const MoELayerEntry& entry);

// What one set of inputs (an expert's tokens, or its hidden activations of them) gives the
// linears they reach: the statistics, SparseGPT's factor of them (computed once for the gate and
// up projections), and the tokens themselves scaled by sqrt(token weight), kept when there are
// fewer tokens than inputs (the cheaper way to measure the output error).
struct Calibration {
  InputStatistics stats;
  std::optional<SparseGPTFactor> factor;
  torch::Tensor scaled;  // [n, in] fp32, or undefined

  // `full`: keep the whole Gram matrix (SparseGPT, GPTQ); Wanda and magnitude need the diagonal.
  Calibration(const torch::Tensor& x, const torch::Tensor& weight,
              const ExpertSparsityOptions& options, bool full)
      : stats(x.size(1), full) {
    stats.add(x, weight);
    if (full && options.method() == SparsityMethod::kSparseGPT) {
      factor = sparsegpt_factor(stats.gram(), options.sparsegpt());
    }
    if (!stats.full() || x.size(0) < x.size(1)) {
      // fp32 is plenty for a relative error report, and several times faster than fp64.
      scaled = x.to(torch::kFloat);
      if (weight.defined()) scaled = scaled * weight.to(torch::kFloat).sqrt().unsqueeze(1);
    }
  }
  // From statistics gathered elsewhere (a dense linear's captured inputs); they must be full,
  // since the error report needs the Gram matrix without the tokens.
  Calibration(InputStatistics gathered, const ExpertSparsityOptions& options, bool sparsegpt)
      : stats(std::move(gathered)) {
    TORCH_CHECK(stats.full(), "Calibration: diagonal-only statistics");
    if (sparsegpt) {
      factor = sparsegpt_factor(stats.gram(), options.sparsegpt());
    }
  }
};

// The pruned weight [out, in] of one linear (W in the usual orientation) and what it adds to the
// layer's relative error (numerator, denominator: ||(W - W') X^T||^2 and ||W X^T||^2 over the
// weighted tokens).
struct PrunedLinear {
  torch::Tensor weight;
  double error = 0.0, reference = 0.0;
};

// What becomes of one linear [out, in] given its calibration (null: none): its new weight, in
// w's dtype. Set by quantisation (expert_quantization.cpp); unset, the options' sparsity method
// and pattern prune it.
using LinearTransform =
    std::function<torch::Tensor(const torch::Tensor& w, const Calibration* calibration)>;

inline PrunedLinear prune_linear(const torch::Tensor& w, const Calibration* calibration,
                                 const ExpertSparsityOptions& options,
                                 const LinearTransform& transform = {}) {
  PrunedLinear out;
  if (transform) {
    out.weight = transform(w, calibration);
  } else
    switch (options.method()) {
      case SparsityMethod::kMagnitude:
        out.weight = w * magnitude_mask(w, options.pattern()).to(w.scalar_type());
        break;
      case SparsityMethod::kWanda:
        out.weight =
            w *
            wanda_mask(w, calibration->stats.column_norms(), options.pattern()).to(w.scalar_type());
        break;
      case SparsityMethod::kSparseGPT:
        out.weight =
            sparsegpt(w, *calibration->factor, options.pattern(), options.sparsegpt()).weight;
        break;
    }
  if (calibration == nullptr) {
    out.error = out.reference = std::numeric_limits<double>::quiet_NaN();
    return out;
  }
  if (calibration->scaled.defined()) {
    // n x in x out multiply-adds from the tokens (fewer than the Gram matrix's in x in x out when
    // there are fewer tokens than inputs), summed in fp64.
    const auto& x = calibration->scaled;
    const auto before = w.to(torch::kFloat);
    const auto delta = before - out.weight.to(torch::kFloat);
    out.error = x.mm(delta.t()).square().sum(torch::kDouble).item<double>();
    out.reference = x.mm(before.t()).square().sum(torch::kDouble).item<double>();
  } else {
    const auto before = w.to(torch::kDouble);
    const auto delta = before - out.weight.to(torch::kDouble);
    const auto& g = calibration->stats.gram();
    out.error = delta.mm(g).mul(delta).sum().item<double>();
    out.reference = before.mm(g).mul(before).sum().item<double>();
  }
  return out;
}

// The codes behind the weights a quantisation transform changed, by the address of the weight's
// first element as the transform was given it (a bank slab or a linear's weight, which is
// where the drivers write the new weight back): for writers that store codes, not values.
using QuantizedWeights = std::map<const void*, QuantizedWeight>;

// The transform quantize() applies: each weight replaced by its RTN or GPTQ dequantised value, in
// its dtype; with `keep`, each weight's codes are recorded there too. The calibration options
// for the drivers are options.calibration() with RTN's method set to magnitude (no statistics
// beyond the error report).
LinearTransform quantization_transform(const QuantizeOptions& options,
                                       QuantizedWeights* keep = nullptr);
ExpertSparsityOptions quantization_calibration(const QuantizeOptions& options);

// The drivers behind sparsify_moe_layer, sparsify_linears and sparsify, with `transform` in
// place of pruning when set (no option checks: their callers do them).
LayerSparsityReport slim_moe_layer(const MoELayerEntry& entry, const LayerCalls* calls,
                                   const ExpertSparsityOptions& options,
                                   const LinearTransform& transform);
LinearSparsityReport slim_linears(const std::vector<LinearEntry>& linears,
                                  const std::vector<InputStatistics>* inputs,
                                  const ExpertSparsityOptions& options,
                                  const LinearTransform& transform);
SparsityReport slim(const MoEView& view, const ExpertSparsityOptions& options,
                    const LinearTransform& transform, const LayerSparsityCallback& on_layer,
                    const LinearSparsityCallback& on_linears);

}  // namespace moeprune::compression::sparsity_detail
