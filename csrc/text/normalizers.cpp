#include "normalizers.h"

#include <c10/util/Exception.h>
#include <utf8proc.h>

#include <cstdlib>
#include <vector>

#include "json_fields.h"
#include "utf8.h"

namespace moeprune::text::detail {
namespace {

// Unicode normalization forms (normalizers/unicode.rs) through utf8proc.
class UnicodeForm : public Normalizer {
 public:
  UnicodeForm(utf8proc_option_t options, std::string name)
      : options_(options), name_(std::move(name)) {}
  void normalize(std::string& text) const override {
    if (text.empty()) return;
    utf8proc_uint8_t* out = nullptr;
    const utf8proc_ssize_t n =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                     static_cast<utf8proc_ssize_t>(text.size()), &out, options_);
    TORCH_CHECK(n >= 0, name_, " normalization failed: ", utf8proc_errmsg(n));
    text.assign(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
    std::free(out);
  }

 private:
  utf8proc_option_t options_;
  std::string name_;
};

// Rust's str::to_lowercase uses the full case mapping; utf8proc gives the simple one. The two
// differ only for a handful of characters (e.g. U+0130 and a word-final capital sigma).
class Lowercase : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    std::string out;
    out.reserve(text.size());
    for (const auto& cp : code_points(text)) {
      append_utf8(out, static_cast<char32_t>(utf8proc_tolower(static_cast<int32_t>(cp.value))));
    }
    text = std::move(out);
  }
};

// Drops combining marks (general category M), as StripAccents does after an NFD.
class StripAccents : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    std::string out;
    out.reserve(text.size());
    for (const auto& cp : code_points(text)) {
      const auto category = utf8proc_category(static_cast<int32_t>(cp.value));
      if (category == UTF8PROC_CATEGORY_MN || category == UTF8PROC_CATEGORY_MC ||
          category == UTF8PROC_CATEGORY_ME) {
        continue;
      }
      out.append(text, cp.offset, cp.length);
    }
    text = std::move(out);
  }
};

class Prepend : public Normalizer {
 public:
  explicit Prepend(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class Replace : public Normalizer {
 public:
  Replace(const nlohmann::json& spec, const std::string& what)
      : pattern_(field(spec, "pattern", what), what),
        content_(string_field(spec, "content", what)) {}
  void normalize(std::string& text) const override { text = pattern_.replace(text, content_); }

 private:
  ReplacePattern pattern_;
  std::string content_;
};

class Strip : public Normalizer {
 public:
  Strip(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& text) const override {
    const auto cps = code_points(text);
    size_t begin = 0, end = cps.size();
    if (left_) {
      while (begin < end && is_unicode_whitespace(cps[begin].value)) ++begin;
    }
    if (right_) {
      while (end > begin && is_unicode_whitespace(cps[end - 1].value)) --end;
    }
    if (begin == end) {
      text.clear();
      return;
    }
    const size_t from = cps[begin].offset;
    const size_t to = cps[end - 1].offset + cps[end - 1].length;
    text = text.substr(from, to - from);
  }

 private:
  bool left_, right_;
};

class Sequence : public Normalizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<Normalizer>> parts) : parts_(std::move(parts)) {}
  void normalize(std::string& text) const override {
    for (const auto& part : parts_) part->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

}  // namespace

ReplacePattern::ReplacePattern(const nlohmann::json& pattern, const std::string& what) {
  TORCH_CHECK(pattern.is_object() && pattern.size() == 1, what,
              ": a Replace pattern is {\"String\": ...} or {\"Regex\": ...}, found ",
              pattern.dump());
  if (pattern.contains("String")) {
    literal_ = string_field(pattern, "String", what);
  } else {
    regex_ = std::make_unique<Regex>(string_field(pattern, "Regex", what), what);
  }
}

std::string ReplacePattern::replace(std::string_view text, const std::string& content) const {
  std::string out;
  if (regex_) {
    size_t previous = 0;
    for (const auto& [start, end] : regex_->find_all(text)) {
      out.append(text.substr(previous, start - previous));
      out += content;
      previous = end;
    }
    out.append(text.substr(previous));
    return out;
  }
  if (literal_.empty()) return std::string(text);
  size_t previous = 0;
  for (size_t at = text.find(literal_); at != std::string_view::npos;
       at = text.find(literal_, previous)) {
    out.append(text.substr(previous, at - previous));
    out += content;
    previous = at + literal_.size();
  }
  out.append(text.substr(previous));
  return out;
}

std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& spec, const std::string& what) {
  if (spec.is_null()) return nullptr;
  const std::string kind = type_of(spec, what + " normalizer");
  const std::string here = what + " normalizer " + kind;
  if (kind == "NFC")
    return std::make_unique<UnicodeForm>(
        static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE), "NFC");
  if (kind == "NFD")
    return std::make_unique<UnicodeForm>(
        static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE), "NFD");
  if (kind == "NFKC")
    return std::make_unique<UnicodeForm>(
        static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT),
        "NFKC");
  if (kind == "NFKD")
    return std::make_unique<UnicodeForm>(
        static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT),
        "NFKD");
  if (kind == "Lowercase") return std::make_unique<Lowercase>();
  if (kind == "StripAccents") return std::make_unique<StripAccents>();
  if (kind == "Prepend") return std::make_unique<Prepend>(string_field(spec, "prepend", here));
  if (kind == "Replace") return std::make_unique<Replace>(spec, here);
  if (kind == "Strip") {
    return std::make_unique<Strip>(bool_field(spec, "strip_left", false, here),
                                   bool_field(spec, "strip_right", false, here));
  }
  if (kind == "Sequence") {
    const auto& list = field(spec, "normalizers", here);
    TORCH_CHECK(list.is_array(), here, ": \"normalizers\" is not a list");
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (const auto& part : list) {
      auto made = make_normalizer(part, what);
      if (made) parts.push_back(std::move(made));
    }
    return std::make_unique<Sequence>(std::move(parts));
  }
  if (kind == "Precompiled") {
    TORCH_CHECK(false, here,
                " (a SentencePiece character map) is not supported: load the model's "
                "tokenizer.model instead (Tokenizer::from_sentencepiece)");
  }
  TORCH_CHECK(false, what, ": normalizer \"", kind,
              "\" is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, StripAccents, "
              "Prepend, Replace, Strip, Sequence)");
}

}  // namespace moeprune::text::detail
