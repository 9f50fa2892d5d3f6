#pragma once

// Typed dispatcher handles of the moeprune ops, looked up once. The public wrappers
// (csrc/ops/ops.cpp) and the autograd kernels (csrc/ops/autograd) call the ops through these.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/types.h>

#include <tuple>

namespace moeprune::detail {

using DispatchSig = torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&);
using CombineSig = torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                 const torch::Tensor&);
using CombineBackwardSig = std::tuple<torch::Tensor, torch::Tensor>(const torch::Tensor&,
                                                                    const torch::Tensor&,
                                                                    const torch::Tensor&,
                                                                    const torch::Tensor&,
                                                                    const torch::Tensor&);

inline const c10::TypedOperatorHandle<DispatchSig>& dispatch_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("moeprune::dispatch", "").typed<DispatchSig>();
  return op;
}

inline const c10::TypedOperatorHandle<DispatchSig>& dispatch_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("moeprune::_dispatch_backward", "")
                             .typed<DispatchSig>();
  return op;
}

inline const c10::TypedOperatorHandle<CombineSig>& combine_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("moeprune::combine", "").typed<CombineSig>();
  return op;
}

inline const c10::TypedOperatorHandle<CombineBackwardSig>& combine_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("moeprune::_combine_backward", "")
                             .typed<CombineBackwardSig>();
  return op;
}

}  // namespace moeprune::detail
