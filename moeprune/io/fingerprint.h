#pragma once

// Fingerprints that say whether an input changed: a resumable run's journal (token ids, options,
// checkpoint files), a cached demo checkpoint's recipe (its training data). FNV-1a, 64 bits
// (Fowler, Noll and Vo; the parameters of http://www.isthe.com/chongo/tech/comp/fnv/): fast and
// good at telling inputs apart, not a defence against anyone forging a collision.
#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

namespace moeprune::io {

class Fingerprint {
 public:
  /// Mixes in `size` bytes.
  Fingerprint& add(const void* data, size_t size) {
    const auto* bytes = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < size; ++i) hash_ = (hash_ ^ bytes[i]) * kPrime;
    return *this;
  }
  /// Mixes in a string and a terminating zero byte, so ("ab", "c") and ("a", "bc") differ.
  Fingerprint& add_text(const std::string& text) { return add(text.c_str(), text.size() + 1); }
  /// Mixes in a file's bytes; throws naming the file when it cannot be read.
  Fingerprint& add_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    TORCH_CHECK(in, "cannot read '", path, "' to fingerprint it");
    char buffer[1 << 16];
    while (in.read(buffer, sizeof buffer) || in.gcount() > 0) {
      add(buffer, static_cast<size_t>(in.gcount()));
    }
    TORCH_CHECK(in.eof(), "reading '", path, "' to fingerprint it failed");
    return *this;
  }

  uint64_t value() const { return hash_; }
  /// 16 lowercase hex digits.
  std::string hex() const {
    char text[17];
    std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(hash_));
    return text;
  }

 private:
  static constexpr uint64_t kOffsetBasis = 14695981039346656037ull;
  static constexpr uint64_t kPrime = 1099511628211ull;
  uint64_t hash_ = kOffsetBasis;
};

}  // namespace moeprune::io
