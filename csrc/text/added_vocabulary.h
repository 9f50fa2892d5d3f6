#pragma once

// The added tokens of a tokenizer.json (internal): special and user-added tokens matched in the
// text before the model sees it, leftmost-longest, with their single_word, lstrip, rstrip and
// normalized options (tokenizer/added_vocabulary.rs of Hugging Face tokenizers).
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "normalizers.h"
#include "pieces.h"

namespace moeprune::text::detail {

struct AddedToken {
  int64_t id = 0;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

class AddedVocabulary {
 public:
  /// From the "added_tokens" list; `normalizer` (may be null) gives the normalized form of the
  /// tokens with normalized = true.
  AddedVocabulary(const nlohmann::json& list, const Normalizer* normalizer,
                  const std::string& what);

  /// `text` split into added tokens and the rest, the rest normalized: first the tokens with
  /// normalized = false on the raw text, then the others on each normalized remainder.
  Pieces extract_and_normalize(std::string_view text, const Normalizer* normalizer) const;

  const AddedToken* find(int64_t id) const;
  std::optional<int64_t> id_of(std::string_view content) const;
  /// Whether `content` is the content of a special added token.
  bool is_special_content(std::string_view content) const;
  /// One past the largest added id (0 when there are none).
  int64_t end_id() const { return end_id_; }

 private:
  // Patterns grouped by first byte, longest first: leftmost-longest matching.
  struct Matcher {
    std::unordered_map<unsigned char, std::vector<std::pair<std::string, size_t>>> by_first_byte;
    bool empty() const { return by_first_byte.empty(); }
  };
  struct Match {
    std::optional<int64_t> id;
    size_t start, end;
  };
  static void add_pattern(Matcher& matcher, std::string pattern, size_t token);
  std::vector<Match> find_matches(std::string_view sentence, const Matcher& matcher) const;
  Pieces split_with_matches(const Piece& piece, const Matcher& matcher) const;

  std::vector<AddedToken> tokens_;
  std::unordered_map<int64_t, size_t> by_id_;
  std::unordered_map<std::string, int64_t> by_content_;
  std::unordered_set<std::string> special_contents_;
  Matcher raw_, normalized_;
  int64_t end_id_ = 0;
};

}  // namespace moeprune::text::detail
