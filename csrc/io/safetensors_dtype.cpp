// The safetensors dtype names and the torch scalar types they stand for (the format's spec, as
// the reference implementation's Dtype enum lists them).
#include <moeprune/io/safetensors.h>

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>
#include <torch/types.h>

#include <array>
#include <string>
#include <vector>

namespace moeprune::safetensors {
namespace {

struct DtypeEntry {
  const char* name;
  torch::ScalarType type;
};

constexpr std::array<DtypeEntry, 17> kDtypes{{
    {"BOOL", torch::kBool},
    {"U8", torch::kByte},
    {"I8", torch::kChar},
    {"I16", torch::kShort},
    {"U16", torch::kUInt16},
    {"F16", torch::kHalf},
    {"BF16", torch::kBFloat16},
    {"I32", torch::kInt},
    {"U32", torch::kUInt32},
    {"F32", torch::kFloat},
    {"C64", torch::kComplexFloat},
    {"F64", torch::kDouble},
    {"I64", torch::kLong},
    {"U64", torch::kUInt64},
    {"F8_E4M3", torch::kFloat8_e4m3fn},
    {"F8_E5M2", torch::kFloat8_e5m2},
    {"F8_E8M0", torch::kFloat8_e8m0fnu},
}};

}  // namespace

std::string dtype_name(torch::ScalarType type) {
  for (const auto& d : kDtypes) {
    if (d.type == type) {
      return d.name;
    }
  }
  TORCH_CHECK(false, "safetensors has no dtype name for ", c10::toString(type));
}

torch::ScalarType scalar_type(const std::string& dtype_name) {
  for (const auto& d : kDtypes) {
    if (dtype_name == d.name) {
      return d.type;
    }
  }
  std::vector<std::string> known;
  for (const auto& d : kDtypes) {
    known.emplace_back(d.name);
  }
  TORCH_CHECK(false, "unknown dtype '", dtype_name, "' (known: ", c10::Join(", ", known), ")");
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (auto s : shape) {
    n *= s;
  }
  return n;
}

}  // namespace moeprune::safetensors
