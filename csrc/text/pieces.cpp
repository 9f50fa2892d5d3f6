#include "pieces.h"

#include <c10/util/Exception.h>

#include <algorithm>

namespace moeprune::text::detail {

SplitBehavior parse_split_behavior(const std::string& name, const std::string& what) {
  std::string lower;
  for (char c : name) {
    if (c >= 'A' && c <= 'Z') {
      if (!lower.empty()) lower += '_';
      lower += static_cast<char>(c - 'A' + 'a');
    } else {
      lower += c;
    }
  }
  if (lower == "removed") return SplitBehavior::Removed;
  if (lower == "isolated") return SplitBehavior::Isolated;
  if (lower == "merged_with_previous") return SplitBehavior::MergedWithPrevious;
  if (lower == "merged_with_next") return SplitBehavior::MergedWithNext;
  if (lower == "contiguous") return SplitBehavior::Contiguous;
  TORCH_CHECK(false, what, ": unknown split behavior \"", name,
              "\" (expected removed, isolated, merged_with_previous, merged_with_next or "
              "contiguous)");
}

Segments segments_from_matches(std::string_view text,
                               const std::vector<std::pair<size_t, size_t>>& matches) {
  Segments out;
  if (text.empty()) {
    out.push_back({{0, 0}, false});
    return out;
  }
  size_t previous = 0;
  for (const auto& [start, end] : matches) {
    if (previous != start) out.push_back({{previous, start}, false});
    out.push_back({{start, end}, true});
    previous = end;
  }
  if (previous != text.size()) out.push_back({{previous, text.size()}, false});
  return out;
}

Pieces split_piece(const Piece& piece, const Segments& segments, SplitBehavior behavior) {
  // Which ranges become pieces (normalizer.rs, NormalizedString::split): (range, remove).
  std::vector<std::pair<std::pair<size_t, size_t>, bool>> ranges;
  switch (behavior) {
    case SplitBehavior::Isolated:
      for (const auto& [range, is_match] : segments) ranges.push_back({range, false});
      break;
    case SplitBehavior::Removed:
      ranges = segments;
      break;
    case SplitBehavior::Contiguous: {
      bool previous_match = false;
      for (const auto& [range, is_match] : segments) {
        if (is_match == previous_match && !ranges.empty()) {
          ranges.back().first.second = range.second;
        } else {
          ranges.push_back({range, false});
        }
        previous_match = is_match;
      }
      break;
    }
    case SplitBehavior::MergedWithPrevious: {
      bool previous_match = false;
      for (const auto& [range, is_match] : segments) {
        if (is_match && !previous_match && !ranges.empty()) {
          ranges.back().first.second = range.second;
        } else {
          ranges.push_back({range, false});
        }
        previous_match = is_match;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool previous_match = false;
      for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
        const auto& [range, is_match] = *it;
        if (is_match && !previous_match && !ranges.empty()) {
          ranges.back().first.first = range.first;
        } else {
          ranges.push_back({range, false});
        }
        previous_match = is_match;
      }
      std::reverse(ranges.begin(), ranges.end());
      break;
    }
  }
  Pieces out;
  for (const auto& [range, remove] : ranges) {
    if (remove) continue;
    Piece part;
    part.text = piece.text.substr(range.first, range.second - range.first);
    part.at_origin = piece.at_origin && range.first == 0;
    out.push_back(std::move(part));
  }
  return out;
}

}  // namespace moeprune::text::detail
