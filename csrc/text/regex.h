#pragma once

// Regular expressions for the pre-tokenizer patterns (internal), through Debian's PCRE2 in UTF
// and Unicode-property mode: \p{L}, \s and \w are Unicode-aware, and look-ahead (GPT-2's
// \s+(?!\S)) works, which RE2 does not offer. Compiled once (JIT where available); matching is
// thread-safe.
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moeprune::text::detail {

class Regex {
 public:
  /// Compiles `pattern`; a syntax error is refused naming `what` (e.g. the tokenizer file and
  /// component), the pattern and PCRE2's message.
  Regex(const std::string& pattern, const std::string& what);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  /// Every non-overlapping, non-empty match in valid UTF-8 `text`, left to right, as byte
  /// [start, end) ranges.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;
  /// Whether the pattern matches somewhere in `text`.
  bool search(std::string_view text) const;

  /// `literal` with every character that is special in a pattern escaped.
  static std::string escape(std::string_view literal);

 private:
  struct Compiled;
  std::unique_ptr<Compiled> compiled_;
};

}  // namespace moeprune::text::detail
