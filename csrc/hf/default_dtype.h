#pragma once

// Modules built while a DefaultDtype lives get their parameters in its dtype, so a model loaded
// in bf16 is never first built (and randomly initialised) in fp32.
#include <c10/core/DefaultDtype.h>
#include <c10/core/ScalarType.h>

namespace moeprune::hf::detail {

class DefaultDtype {
 public:
  explicit DefaultDtype(c10::ScalarType type) : old_(c10::get_default_dtype()) {
    c10::set_default_dtype(c10::scalarTypeToTypeMeta(type));
  }
  ~DefaultDtype() { c10::set_default_dtype(old_); }
  DefaultDtype(const DefaultDtype&) = delete;
  DefaultDtype& operator=(const DefaultDtype&) = delete;

 private:
  caffe2::TypeMeta old_;
};

}  // namespace moeprune::hf::detail
