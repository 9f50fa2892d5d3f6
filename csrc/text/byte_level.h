#pragma once

// GPT-2's reversible map between bytes and printable characters (internal), used by the
// ByteLevel pre-tokenizer and decoder: bytes that are printable Latin-1 map to themselves, the
// others to U+0100 onwards (openai/gpt-2 src/encoder.py bytes_to_unicode; tokenizers'
// pre_tokenizers/byte_level.rs).
#include <cstdint>
#include <optional>
#include <string>

namespace moeprune::text::detail {

/// The character (as UTF-8) byte `b` becomes.
const std::string& byte_to_unicode(uint8_t b);

/// The byte character `cp` stands for, if it is one of the 256.
std::optional<uint8_t> unicode_to_byte(char32_t cp);

}  // namespace moeprune::text::detail
