#include "byte_level.h"

#include <array>
#include <unordered_map>

#include "utf8.h"

namespace moeprune::text::detail {
namespace {

struct ByteTable {
  std::array<std::string, 256> to_unicode;
  std::unordered_map<char32_t, uint8_t> to_byte;

  ByteTable() {
    std::array<char32_t, 256> code{};
    std::array<bool, 256> printable{};
    auto keep = [&](int from, int to) {
      for (int b = from; b <= to; ++b) printable[b] = true;
    };
    keep('!', '~');
    keep(0xA1, 0xAC);
    keep(0xAE, 0xFF);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) code[b] = printable[b] ? static_cast<char32_t>(b) : next++;
    for (int b = 0; b < 256; ++b) {
      append_utf8(to_unicode[b], code[b]);
      to_byte[code[b]] = static_cast<uint8_t>(b);
    }
  }
};

const ByteTable& table() {
  static const ByteTable instance;
  return instance;
}

}  // namespace

const std::string& byte_to_unicode(uint8_t b) {
  return table().to_unicode[b];
}

std::optional<uint8_t> unicode_to_byte(char32_t cp) {
  const auto& map = table().to_byte;
  const auto it = map.find(cp);
  if (it == map.end()) return std::nullopt;
  return it->second;
}

}  // namespace moeprune::text::detail
