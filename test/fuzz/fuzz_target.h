#pragma once

// One fuzz target: a function given arbitrary bytes that must either succeed or refuse them with
// a c10::Error (TORCH_CHECK, the library's one error policy). Anything else (a crash, a sanitizer
// report, another exception type escaping) is a finding.
//
// Built two ways from the same source:
// - with MOEPRUNE_LIBFUZZER (scripts/fuzz, clang -fsanitize=fuzzer): the target is the binary's
//   LLVMFuzzerTestOneInput;
// - otherwise (the normal build, ./scripts/test): the target registers itself by name with
//   fuzz_replay, which runs the seed corpus, the regression inputs and seeded mutations of them.
#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

namespace moeprune_fuzz {

using Target = void (*)(const uint8_t* data, size_t size);

/// Targets by name (fuzz_replay only).
inline std::map<std::string, Target>& targets() {
  static std::map<std::string, Target> all;
  return all;
}

struct Registration {
  Registration(const char* name, Target target) { targets().emplace(name, target); }
};

/// Refusals so far (fuzz_replay reports them, so a smoke run that refuses everything shows).
inline long& refusals() {
  static long count = 0;
  return count;
}

/// Runs `body` and swallows the refusal the library promises for bad input.
template <typename F>
void refused_or_accepted(F&& body) {
  try {
    body();
  } catch (const c10::Error&) {
    ++refusals();  // a clear refusal: the expected outcome for most inputs
  }
}

}  // namespace moeprune_fuzz

#ifdef MOEPRUNE_LIBFUZZER
#define MOEPRUNE_FUZZ_TARGET(name)                                          \
  static void name##_fuzz_one(const uint8_t* data, size_t size);            \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) { \
    name##_fuzz_one(data, size);                                            \
    return 0;                                                               \
  }                                                                         \
  static void name##_fuzz_one(const uint8_t* data, size_t size)
#else
#define MOEPRUNE_FUZZ_TARGET(name)                                                      \
  static void name##_fuzz_one(const uint8_t* data, size_t size);                        \
  static const moeprune_fuzz::Registration name##_registration(#name, name##_fuzz_one); \
  static void name##_fuzz_one(const uint8_t* data, size_t size)
#endif
