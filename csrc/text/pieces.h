#pragma once

// The text on its way through a tokenizer.json pipeline (internal): `tokenizers`'
// PreTokenizedString reduced to what the ids depend on. Offsets into the original text are not
// kept, except whether a piece starts at its beginning (Metaspace's "first" prepend scheme).
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moeprune::text::detail {

struct Piece {
  std::string text;
  /// Starts at byte 0 of the text given to encode.
  bool at_origin = false;
  /// Set when the piece is an added token; such a piece is neither normalized nor split again.
  std::optional<int64_t> id;
};
using Pieces = std::vector<Piece>;

/// What a split does with the matched delimiters (`tokenizers`' SplitDelimiterBehavior).
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

/// Parses "removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"
/// (also CamelCase, as older files write them); refuses anything else naming `what`.
SplitBehavior parse_split_behavior(const std::string& name, const std::string& what);

/// A covering of a text by [start, end) ranges, each flagged as a match of the split pattern.
using Segments = std::vector<std::pair<std::pair<size_t, size_t>, bool>>;

/// The segments of `text` given its matches in order (an empty text is one empty non-match).
Segments segments_from_matches(std::string_view text,
                               const std::vector<std::pair<size_t, size_t>>& matches);

/// Splits `piece` along `segments` as `behavior` says (normalizer.rs NormalizedString::split),
/// dropping empty results; the first result keeps `at_origin` when it starts at byte 0.
Pieces split_piece(const Piece& piece, const Segments& segments, SplitBehavior behavior);

/// Applies `fn` (Piece -> Pieces) to every piece that is not an added token, in order, and drops
/// empty results, as PreTokenizedString::split does.
template <typename Fn>
void split_each(Pieces& pieces, Fn&& fn) {
  Pieces out;
  out.reserve(pieces.size());
  for (auto& piece : pieces) {
    if (piece.id) {
      out.push_back(std::move(piece));
      continue;
    }
    for (auto& part : fn(piece)) {
      if (!part.text.empty() || part.id) out.push_back(std::move(part));
    }
  }
  pieces = std::move(out);
}

}  // namespace moeprune::text::detail
