#include <moeprune/layers/linear_capture.h>

#include <torch/torch.h>

#include <cstring>
#include <memory>
#include <optional>

namespace moeprune {
namespace linear_capture_detail {

// The capture this thread runs (RecordFunction's callbacks are plain function pointers), how
// deep inside a recognised call the thread is (a linear's own matmul is not a second call), and
// whether the visitor is running (its operations are not the model's).
thread_local LinearInputCapture* active = nullptr;
thread_local int depth = 0;
thread_local bool visiting = false;

// Marks a recognised call, so its end callback leaves it.
struct Recognised : at::ObserverContext {};

// Where the input and the weight are in the calls a linear layer makes, and whether the weight is
// transposed there.
struct LinearCall {
  size_t input = 0, weight = 0;
  bool transposed = false;
};
std::optional<LinearCall> linear_call(const char* name) {
  if (std::strcmp(name, "aten::addmm") == 0) return LinearCall{1, 2, true};    // (bias, x, W^T)
  if (std::strcmp(name, "aten::matmul") == 0) return LinearCall{0, 1, true};   // (x, W^T)
  if (std::strcmp(name, "aten::linear") == 0) return LinearCall{0, 1, false};  // (x, W, b)
  return std::nullopt;
}

struct Access {
  static std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
    if (active == nullptr || visiting) return nullptr;
    const auto call = linear_call(fn.name());
    if (!call) return nullptr;
    const auto inputs = fn.inputs();
    if (inputs.size() <= call->weight || !inputs[call->weight].isTensor() ||
        !inputs[call->input].isTensor()) {
      return nullptr;
    }
    const auto index = active->match(inputs[call->weight].toTensor(), call->transposed);
    if (index < 0) return nullptr;
    if (depth++ == 0) {
      visiting = true;
      active->deliver(static_cast<size_t>(index), inputs[call->input].toTensor());
      visiting = false;
    }
    return std::make_unique<Recognised>();
  }
};

void on_end(const at::RecordFunction& /*fn*/, at::ObserverContext* context) {
  if (context != nullptr) --depth;
}

}  // namespace linear_capture_detail

std::string to_string(LinearRole role) {
  switch (role) {
    case LinearRole::kAttention:
      return "attention";
    case LinearRole::kSharedExpert:
      return "shared_experts";
    case LinearRole::kDenseMLP:
      return "dense";
  }
  TORCH_CHECK(false, "unknown linear role");
}

LinearInputCapture::LinearInputCapture(const std::vector<torch::nn::Linear>& linears,
                                       LinearInputVisitor visit)
    : visit_(std::move(visit)), calls_(linears.size(), 0) {
  namespace d = linear_capture_detail;
  TORCH_CHECK(d::active == nullptr,
              "LinearInputCapture: another capture is running on this thread");
  TORCH_CHECK(static_cast<bool>(visit_), "LinearInputCapture: no visitor");
  for (const auto& linear : linears) {
    TORCH_CHECK(!linear.is_empty() && linear->weight.defined() && linear->weight.dim() == 2,
                "LinearInputCapture: a layer without a 2-D weight");
    weights_.push_back(linear->weight);
  }
  TORCH_CHECK(at::isRecordFunctionEnabled(),
              "LinearInputCapture: ATen's RecordFunction is disabled on this thread");
  d::active = this;
  d::depth = 0;
  handle_ = at::addThreadLocalCallback(at::RecordFunctionCallback(&d::Access::on_start, &d::on_end)
                                           .needsInputs(true)
                                           .scopes({at::RecordScope::FUNCTION}));
}

LinearInputCapture::~LinearInputCapture() {
  at::removeCallback(handle_);
  linear_capture_detail::active = nullptr;
  linear_capture_detail::depth = 0;
}

int64_t LinearInputCapture::match(const torch::Tensor& weight, bool transposed) const {
  if (weight.dim() != 2) return -1;
  for (size_t i = 0; i < weights_.size(); ++i) {
    const auto& w = weights_[i];
    if (weight.data_ptr() != w.data_ptr()) continue;
    const bool same = transposed ? weight.size(0) == w.size(1) && weight.size(1) == w.size(0) &&
                                       weight.stride(0) == w.stride(1)
                                 : weight.sizes() == w.sizes() && weight.strides() == w.strides();
    if (same) return static_cast<int64_t>(i);
  }
  return -1;
}

void LinearInputCapture::deliver(size_t index, const torch::Tensor& input) {
  if (error_) return;
  try {
    TORCH_CHECK(input.dim() >= 1 && input.size(-1) == weights_[index].size(1),
                "LinearInputCapture: a layer with ", weights_[index].size(1),
                " inputs was called on ", input.sizes());
    ++calls_[index];
    visit_(index, input.reshape({-1, input.size(-1)}));
  } catch (...) {
    error_ = std::current_exception();
  }
}

void LinearInputCapture::rethrow_if_failed() const {
  if (error_) std::rethrow_exception(error_);
}

}  // namespace moeprune
