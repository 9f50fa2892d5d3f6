#pragma once

// tokenizer.json normalizers (internal): NFC, NFD, NFKC, NFKD (through utf8proc), Lowercase,
// StripAccents, Prepend, Replace (string or regex), Strip and Sequence of these.
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <string_view>

#include "regex.h"

namespace moeprune::text::detail {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
};

/// The normalizer a tokenizer.json "normalizer" object describes; null for a JSON null. Refuses
/// an unsupported type by name; `what` names the file in errors.
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& spec, const std::string& what);

/// The "pattern" of a Replace normalizer or decoder: {"String": s} or {"Regex": r}.
class ReplacePattern {
 public:
  ReplacePattern(const nlohmann::json& pattern, const std::string& what);
  /// `text` with every non-overlapping match, left to right, replaced by `content`.
  std::string replace(std::string_view text, const std::string& content) const;

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
};

}  // namespace moeprune::text::detail
