#include "added_vocabulary.h"

#include <c10/util/Exception.h>
#include <utf8proc.h>

#include <algorithm>

#include "json_fields.h"
#include "utf8.h"

namespace moeprune::text::detail {
namespace {

// Rust regex's \w: alphabetic, marks, decimal digits, connector punctuation, joiners.
bool is_word_char(char32_t c) {
  if (c == 0x200C || c == 0x200D) return true;
  switch (utf8proc_category(static_cast<int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  const auto cps = code_points(s);
  return is_word_char(cps.back().value);
}

bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  const auto cps = code_points(s.substr(0, std::min<size_t>(4, s.size())));
  return !cps.empty() && is_word_char(cps.front().value);
}

// Start of the whitespace run that ends `s` (added_vocabulary.rs, space_leftmost_at_end).
size_t trailing_space_start(std::string_view s) {
  const auto cps = code_points(s);
  size_t start = s.size();
  for (auto it = cps.rbegin(); it != cps.rend() && is_unicode_whitespace(it->value); ++it) {
    start = it->offset;
  }
  return start;
}

// Length of the whitespace run that starts `s` (space_rightmost_at_start).
size_t leading_space_length(std::string_view s) {
  size_t length = 0;
  for (const auto& cp : code_points(s)) {
    if (!is_unicode_whitespace(cp.value)) break;
    length = cp.offset + cp.length;
  }
  return length;
}

}  // namespace

AddedVocabulary::AddedVocabulary(const nlohmann::json& list, const Normalizer* normalizer,
                                 const std::string& what) {
  if (list.is_null()) return;
  TORCH_CHECK(list.is_array(), what, ": \"added_tokens\" is not a list");
  for (const auto& entry : list) {
    const std::string here = what + " added token " + entry.dump();
    AddedToken token;
    token.id = int_field(entry, "id", here);
    TORCH_CHECK(token.id >= 0, here, ": negative id");
    token.content = string_field(entry, "content", here);
    TORCH_CHECK(!token.content.empty(), here, ": empty content");
    TORCH_CHECK(first_invalid_utf8(token.content) == std::string::npos, here,
                ": content is not valid UTF-8");
    token.single_word = bool_field(entry, "single_word", false, here);
    token.lstrip = bool_field(entry, "lstrip", false, here);
    token.rstrip = bool_field(entry, "rstrip", false, here);
    token.special = bool_field(entry, "special", false, here);
    token.normalized = bool_field(entry, "normalized", !token.special, here);
    TORCH_CHECK(!by_id_.count(token.id), what, ": added token id ", token.id, " appears twice");
    by_id_[token.id] = tokens_.size();
    by_content_[token.content] = token.id;
    if (token.special) special_contents_.insert(token.content);
    end_id_ = std::max(end_id_, token.id + 1);
    tokens_.push_back(std::move(token));
  }
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const auto& token = tokens_[i];
    if (token.normalized) {
      std::string pattern = token.content;
      if (normalizer) normalizer->normalize(pattern);
      if (!pattern.empty()) add_pattern(normalized_, pattern, i);
    } else {
      add_pattern(raw_, token.content, i);
    }
  }
}

void AddedVocabulary::add_pattern(Matcher& matcher, std::string pattern, size_t token) {
  auto& list = matcher.by_first_byte[static_cast<unsigned char>(pattern[0])];
  list.emplace_back(std::move(pattern), token);
  std::stable_sort(list.begin(), list.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
}

std::vector<AddedVocabulary::Match> AddedVocabulary::find_matches(std::string_view sentence,
                                                                  const Matcher& matcher) const {
  std::vector<Match> splits;
  if (sentence.empty()) return {{std::nullopt, 0, 0}};
  if (matcher.empty()) return {{std::nullopt, 0, sentence.size()}};
  size_t start_offset = 0;
  size_t i = 0;
  while (i < sentence.size()) {
    const auto it = matcher.by_first_byte.find(static_cast<unsigned char>(sentence[i]));
    const std::pair<std::string, size_t>* found = nullptr;
    if (it != matcher.by_first_byte.end()) {
      for (const auto& candidate : it->second) {  // longest first
        if (sentence.compare(i, candidate.first.size(), candidate.first) == 0) {
          found = &candidate;
          break;
        }
      }
    }
    if (found == nullptr) {
      ++i;
      continue;
    }
    size_t start = i, stop = i + found->first.size();
    i = stop;  // matches never overlap, even a discarded one
    const AddedToken& token = tokens_[found->second];
    if (token.single_word) {
      const bool start_space = start == 0 || !ends_with_word(sentence.substr(0, start));
      const bool stop_space = stop == sentence.size() || !starts_with_word(sentence.substr(stop));
      if (!start_space || !stop_space) continue;
    }
    if (token.lstrip) {
      start = std::max(trailing_space_start(sentence.substr(0, start)), start_offset);
    }
    if (token.rstrip) stop += leading_space_length(sentence.substr(stop));
    if (start_offset < start) splits.push_back({std::nullopt, start_offset, start});
    splits.push_back({token.id, start, stop});
    start_offset = stop;
    i = std::max(i, stop);
  }
  if (start_offset != sentence.size()) {
    splits.push_back({std::nullopt, start_offset, sentence.size()});
  }
  return splits;
}

Pieces AddedVocabulary::split_with_matches(const Piece& piece, const Matcher& matcher) const {
  Pieces out;
  for (const auto& match : find_matches(piece.text, matcher)) {
    Piece part;
    part.text = piece.text.substr(match.start, match.end - match.start);
    part.at_origin = piece.at_origin && match.start == 0;
    part.id = match.id;
    out.push_back(std::move(part));
  }
  return out;
}

Pieces AddedVocabulary::extract_and_normalize(std::string_view text,
                                              const Normalizer* normalizer) const {
  Pieces pieces{Piece{std::string(text), true, std::nullopt}};
  auto drop_empty = [](Pieces& list) {
    list.erase(std::remove_if(list.begin(), list.end(),
                              [](const Piece& p) { return p.text.empty() && !p.id; }),
               list.end());
  };
  pieces = split_with_matches(pieces[0], raw_);
  drop_empty(pieces);
  split_each(pieces, [&](Piece& piece) {
    if (normalizer) normalizer->normalize(piece.text);
    return split_with_matches(piece, normalized_);
  });
  return pieces;
}

const AddedToken* AddedVocabulary::find(int64_t id) const {
  const auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

std::optional<int64_t> AddedVocabulary::id_of(std::string_view content) const {
  const auto it = by_content_.find(std::string(content));
  if (it == by_content_.end()) return std::nullopt;
  return it->second;
}

bool AddedVocabulary::is_special_content(std::string_view content) const {
  return special_contents_.count(std::string(content)) > 0;
}

}  // namespace moeprune::text::detail
