#pragma once

// Errors raised inside one block of a model, rethrown with the block's name in front, so a
// refusal deep in a layer (NaN in a router's input, a full KV cache) says where in the model it
// happened. The checks themselves stay in the layers, which do not know their place.
#include <c10/util/Exception.h>

#include <string>
#include <utility>

namespace moeprune::detail {

template <typename F>
decltype(auto) in_block(const std::string& name, F&& body) {
  try {
    return std::forward<F>(body)();
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, name, ": ", e.what_without_backtrace());
  }
}

}  // namespace moeprune::detail
