#pragma once

// UTF-8 helpers for the tokenizers (internal).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moeprune::text::detail {

/// Length in bytes of the UTF-8 character starting with byte `lead` (1 for a stray byte).
size_t utf8_char_length(unsigned char lead);

/// Byte offset of the first invalid sequence in `s`, or npos when `s` is valid UTF-8.
size_t first_invalid_utf8(std::string_view s);

/// The code points of valid UTF-8 `s`, with the byte offset each starts at.
struct CodePoint {
  char32_t value;
  size_t offset, length;
};
std::vector<CodePoint> code_points(std::string_view s);

/// Unicode's White_Space property (what Rust's char::is_whitespace and regex \s test).
bool is_unicode_whitespace(char32_t cp);

/// Appends `cp` encoded as UTF-8.
void append_utf8(std::string& out, char32_t cp);

/// `bytes` as UTF-8 with every maximal invalid subsequence replaced by U+FFFD (what Rust's
/// String::from_utf8_lossy does, and so `tokenizers`' byte-level decoder).
std::string utf8_lossy(std::string_view bytes);

}  // namespace moeprune::text::detail
