#include <moeprune/compression/linear_sparsity.h>

#include "compression/pruned_linear.h"

#include <torch/torch.h>

#include <chrono>
#include <limits>
#include <map>
#include <utility>

namespace moeprune::compression {
namespace linear_sparsity_detail {

// The longest common prefix of `names` that ends before a '.', or the first name.
std::string common_module(const std::vector<std::string>& names) {
  std::string prefix = names.front();
  for (const auto& n : names) {
    size_t i = 0;
    while (i < prefix.size() && i < n.size() && prefix[i] == n[i]) ++i;
    prefix.resize(i);
  }
  if (names.size() == 1) return prefix;
  const auto dot = prefix.rfind('.');
  return dot == std::string::npos ? prefix : prefix.substr(0, dot);
}

}  // namespace linear_sparsity_detail

LinearCalibration::LinearCalibration(const std::vector<LinearEntry>& linears) : linears_(linears) {
  std::vector<torch::nn::Linear> modules;
  for (const auto& entry : linears_) {
    TORCH_CHECK(!entry.linear.is_empty(), "LinearCalibration: ", entry.name, " has no module");
    TORCH_CHECK(entry.linear->weight.is_floating_point(), "LinearCalibration: ", entry.name,
                " has ", entry.linear->weight.scalar_type(), " weights");
    modules.push_back(entry.linear);
    // Full Gram matrices, also for Wanda: the error report has no tokens to measure with.
    stats_.emplace_back(entry.linear->weight.size(1), /*full=*/true);
  }
  capture_ = std::make_unique<LinearInputCapture>(
      modules, [this](size_t i, const torch::Tensor& x) { stats_[i].add(x); });
}

LinearCalibration::~LinearCalibration() = default;

std::vector<InputStatistics> LinearCalibration::finish() {
  TORCH_CHECK(capture_ != nullptr, "LinearCalibration: already finished");
  const auto calls = capture_->calls();
  std::exception_ptr failed;
  try {
    capture_->rethrow_if_failed();
  } catch (...) {
    failed = std::current_exception();
  }
  capture_.reset();
  if (failed) std::rethrow_exception(failed);
  for (size_t i = 0; i < linears_.size(); ++i) {
    TORCH_CHECK(calls[i] > 0 && stats_[i].tokens() > 0, "sparsify: no calibration tokens reached ",
                linears_[i].name,
                " (it did not run, or ran outside torch::nn::Linear's forward, which the capture "
                "watches)");
  }
  return std::move(stats_);
}

LinearSparsityReport sparsify_linears(const std::vector<LinearEntry>& linears,
                                      const std::vector<InputStatistics>* inputs,
                                      const ExpertSparsityOptions& options) {
  check_sparsity_options(options);
  TORCH_CHECK(inputs != nullptr || options.method() == SparsityMethod::kMagnitude,
              "sparsify: ", to_string(options.method()), " needs calibration data for ",
              linears.empty() ? std::string("the layers") : linears.front().name);
  return sparsity_detail::slim_linears(linears, inputs, options, {});
}

LinearSparsityReport sparsity_detail::slim_linears(const std::vector<LinearEntry>& linears,
                                                   const std::vector<InputStatistics>* inputs,
                                                   const ExpertSparsityOptions& options,
                                                   const LinearTransform& transform) {
  const auto start = std::chrono::steady_clock::now();
  TORCH_CHECK(!linears.empty(), "sparsify_linears: no layers");
  TORCH_CHECK(inputs == nullptr || inputs->size() == linears.size(),
              "sparsify_linears: ", linears.size(), " layers, ",
              inputs == nullptr ? 0 : inputs->size(), " statistics");
  LinearSparsityReport report;
  report.block = linears.front().block;
  report.role = linears.front().role;
  for (const auto& entry : linears) {
    report.linears.push_back(entry.name);
  }
  report.name = linear_sparsity_detail::common_module(report.linears);
  if (inputs != nullptr) report.tokens = inputs->front().tokens();

  torch::NoGradGuard no_grad;
  double error = 0.0, reference = 0.0;
  for (size_t i = 0; i < linears.size(); ++i) {
    const auto& entry = linears[i];
    auto weight = entry.linear->weight;
    TORCH_CHECK(weight.is_floating_point(), "sparsify: ", entry.name, " has ", weight.scalar_type(),
                " weights");
    std::optional<sparsity_detail::Calibration> calibration;
    if (inputs != nullptr) {
      const auto& s = (*inputs)[i];
      TORCH_CHECK(s.full() && s.in_features() == weight.size(1), "sparsify_linears: ", entry.name,
                  " has ", weight.size(1), " inputs; its statistics are for ", s.in_features(),
                  s.full() ? "" : " (diagonal only)");
      try {
        calibration.emplace(s, options,
                            !transform && options.method() == SparsityMethod::kSparseGPT);
      } catch (const c10::Error& e) {
        TORCH_CHECK(false, "sparsify: ", entry.name, " (", s.tokens(),
                    " calibration tokens): ", e.what_without_backtrace());
      }
    }
    sparsity_detail::PrunedLinear pruned;
    try {
      pruned = sparsity_detail::prune_linear(weight.detach(), calibration ? &*calibration : nullptr,
                                             options, transform);
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, entry.name, ": ", e.what_without_backtrace());
    }
    weight.detach().copy_(pruned.weight);
    error += pruned.error;
    reference += pruned.reference;
    report.weights += pruned.weight.numel();
    report.zeros += pruned.weight.numel() - pruned.weight.count_nonzero().item<int64_t>();
  }
  report.relative_error = inputs != nullptr ? (reference > 0.0 ? error / reference : 0.0)
                                            : std::numeric_limits<double>::quiet_NaN();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

std::vector<std::vector<LinearEntry>> group_linears(const std::vector<LinearEntry>& linears) {
  std::vector<std::vector<LinearEntry>> groups;
  std::map<std::pair<int64_t, LinearRole>, size_t> at;
  for (const auto& entry : linears) {
    const auto key = std::make_pair(entry.block, entry.role);
    const auto it = at.find(key);
    if (it == at.end()) {
      at.emplace(key, groups.size());
      groups.push_back({entry});
    } else {
      groups[it->second].push_back(entry);
    }
  }
  return groups;
}

}  // namespace moeprune::compression
