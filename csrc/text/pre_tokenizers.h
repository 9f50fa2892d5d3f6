#pragma once

// tokenizer.json pre-tokenizers (internal): ByteLevel (with or without GPT-2's regex), Split
// (string or regex, every split behavior, invert), Metaspace, Digits, WhitespaceSplit and
// Sequence of these.
#include <nlohmann/json.hpp>

#include <memory>
#include <string>

#include "pieces.h"

namespace moeprune::text::detail {

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  /// Splits (and may rewrite) the pieces that are not added tokens.
  virtual void pre_tokenize(Pieces& pieces) const = 0;
};

/// The pre-tokenizer a tokenizer.json "pre_tokenizer" object describes; null for JSON null.
/// Refuses an unsupported type by name; `what` names the file in errors.
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& spec,
                                                 const std::string& what);

}  // namespace moeprune::text::detail
