#include "pre_tokenizers.h"

#include <c10/util/Exception.h>
#include <utf8proc.h>

#include <functional>
#include <vector>

#include "byte_level.h"
#include "json_fields.h"
#include "regex.h"
#include "utf8.h"

namespace moeprune::text::detail {
namespace {

// Every character for which `test` holds is its own match (pattern.rs, Pattern for Fn(char)).
Segments char_segments(std::string_view text, const std::function<bool(char32_t)>& test) {
  if (text.empty()) return {{{0, 0}, false}};
  Segments out;
  size_t last = 0;
  for (const auto& cp : code_points(text)) {
    if (!test(cp.value)) continue;
    if (last < cp.offset) out.push_back({{last, cp.offset}, false});
    out.push_back({{cp.offset, cp.offset + cp.length}, true});
    last = cp.offset + cp.length;
  }
  if (last < text.size()) out.push_back({{last, text.size()}, false});
  return out;
}

// GPT-2's split (pre_tokenizers/byte_level.rs; openai/gpt-2 src/encoder.py).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevel : public PreTokenizer {
 public:
  ByteLevel(bool add_prefix_space, bool use_regex, const std::string& what)
      : add_prefix_space_(add_prefix_space) {
    if (use_regex) regex_ = std::make_unique<Regex>(kGpt2Pattern, what);
  }
  void pre_tokenize(Pieces& pieces) const override {
    split_each(pieces, [&](Piece& piece) {
      if (add_prefix_space_ && (piece.text.empty() || piece.text[0] != ' ')) {
        piece.text.insert(0, " ");
      }
      if (!regex_) return Pieces{piece};
      return split_piece(piece, segments_from_matches(piece.text, regex_->find_all(piece.text)),
                         SplitBehavior::Isolated);
    });
    for (auto& piece : pieces) {
      if (piece.id) continue;
      std::string mapped;
      mapped.reserve(piece.text.size() * 2);
      for (unsigned char b : piece.text) mapped += byte_to_unicode(b);
      piece.text = std::move(mapped);
    }
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

class Split : public PreTokenizer {
 public:
  Split(const nlohmann::json& spec, const std::string& what)
      : behavior_(parse_split_behavior(string_field(spec, "behavior", what), what)),
        invert_(bool_field(spec, "invert", false, what)) {
    const auto& pattern = field(spec, "pattern", what);
    TORCH_CHECK(pattern.is_object() && pattern.size() == 1, what,
                ": the pattern is {\"String\": ...} or {\"Regex\": ...}, found ", pattern.dump());
    regex_ = std::make_unique<Regex>(pattern.contains("String")
                                         ? Regex::escape(string_field(pattern, "String", what))
                                         : string_field(pattern, "Regex", what),
                                     what);
  }
  void pre_tokenize(Pieces& pieces) const override {
    split_each(pieces, [&](Piece& piece) {
      auto segments = segments_from_matches(piece.text, regex_->find_all(piece.text));
      if (invert_) {
        for (auto& segment : segments) segment.second = !segment.second;
      }
      return split_piece(piece, segments, behavior_);
    });
  }

 private:
  SplitBehavior behavior_;
  bool invert_;
  std::unique_ptr<Regex> regex_;
};

enum class PrependScheme { First, Never, Always };

class Metaspace : public PreTokenizer {
 public:
  Metaspace(const nlohmann::json& spec, const std::string& what)
      : replacement_(string_field(spec, "replacement", what)),
        split_(bool_field(spec, "split", true, what)) {
    const auto cps = code_points(replacement_);
    TORCH_CHECK(cps.size() == 1, what, ": \"replacement\" must be one character, found \"",
                replacement_, "\"");
    replacement_cp_ = cps[0].value;
    // metaspace.rs: prepend_scheme defaults to "always"; the older add_prefix_space = false
    // means "never".
    std::string scheme = "always";
    if (spec.contains("prepend_scheme")) scheme = string_field(spec, "prepend_scheme", what);
    if (!bool_field(spec, "add_prefix_space", true, what)) scheme = "never";
    if (scheme == "first") {
      scheme_ = PrependScheme::First;
    } else if (scheme == "never") {
      scheme_ = PrependScheme::Never;
    } else {
      TORCH_CHECK(scheme == "always", what, ": unknown prepend_scheme \"", scheme,
                  "\" (expected first, never or always)");
      scheme_ = PrependScheme::Always;
    }
  }
  void pre_tokenize(Pieces& pieces) const override {
    split_each(pieces, [&](Piece& piece) {
      std::string text;
      for (char c : piece.text) {
        if (c == ' ') {
          text += replacement_;
        } else {
          text += c;
        }
      }
      const bool starts = text.rfind(replacement_, 0) == 0;
      if (!starts && (scheme_ == PrependScheme::Always ||
                      (scheme_ == PrependScheme::First && piece.at_origin))) {
        text.insert(0, replacement_);
      }
      piece.text = std::move(text);
      if (!split_) return Pieces{piece};
      const char32_t r = replacement_cp_;
      return split_piece(piece, char_segments(piece.text, [r](char32_t c) { return c == r; }),
                         SplitBehavior::MergedWithNext);
    });
  }

 private:
  std::string replacement_;
  char32_t replacement_cp_ = 0;
  bool split_;
  PrependScheme scheme_ = PrependScheme::Always;
};

bool is_numeric(char32_t c) {
  const auto category = utf8proc_category(static_cast<int32_t>(c));
  return category == UTF8PROC_CATEGORY_ND || category == UTF8PROC_CATEGORY_NL ||
         category == UTF8PROC_CATEGORY_NO;
}

class Digits : public PreTokenizer {
 public:
  explicit Digits(bool individual) : individual_(individual) {}
  void pre_tokenize(Pieces& pieces) const override {
    split_each(pieces, [&](Piece& piece) {
      return split_piece(piece, char_segments(piece.text, is_numeric),
                         individual_ ? SplitBehavior::Isolated : SplitBehavior::Contiguous);
    });
  }

 private:
  bool individual_;
};

class WhitespaceSplit : public PreTokenizer {
 public:
  void pre_tokenize(Pieces& pieces) const override {
    split_each(pieces, [&](Piece& piece) {
      return split_piece(piece, char_segments(piece.text, is_unicode_whitespace),
                         SplitBehavior::Removed);
    });
  }
};

class Sequence : public PreTokenizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PreTokenizer>> parts) : parts_(std::move(parts)) {}
  void pre_tokenize(Pieces& pieces) const override {
    for (const auto& part : parts_) part->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& spec,
                                                 const std::string& what) {
  if (spec.is_null()) return nullptr;
  const std::string kind = type_of(spec, what + " pre_tokenizer");
  const std::string here = what + " pre_tokenizer " + kind;
  if (kind == "ByteLevel") {
    return std::make_unique<ByteLevel>(bool_field(spec, "add_prefix_space", true, here),
                                       bool_field(spec, "use_regex", true, here), here);
  }
  if (kind == "Split") return std::make_unique<Split>(spec, here);
  if (kind == "Metaspace") return std::make_unique<Metaspace>(spec, here);
  if (kind == "Digits") {
    return std::make_unique<Digits>(bool_field(spec, "individual_digits", false, here));
  }
  if (kind == "WhitespaceSplit") return std::make_unique<WhitespaceSplit>();
  if (kind == "Sequence") {
    const auto& list = field(spec, "pretokenizers", here);
    TORCH_CHECK(list.is_array(), here, ": \"pretokenizers\" is not a list");
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (const auto& part : list) {
      auto made = make_pre_tokenizer(part, what);
      if (made) parts.push_back(std::move(made));
    }
    return std::make_unique<Sequence>(std::move(parts));
  }
  TORCH_CHECK(false, what, ": pre_tokenizer \"", kind,
              "\" is not supported (supported: ByteLevel, Split, Metaspace, Digits, "
              "WhitespaceSplit, Sequence)");
}

}  // namespace moeprune::text::detail
