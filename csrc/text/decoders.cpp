#include "decoders.h"

#include <c10/util/Exception.h>

#include <cstdlib>

#include "byte_level.h"
#include "json_fields.h"
#include "normalizers.h"
#include "utf8.h"

namespace moeprune::text::detail {
namespace {

// Bytes back from GPT-2's characters; a token with any other character (an added token such as
// "<|im_end|>" made of other characters) contributes its own UTF-8 (pre_tokenizers/byte_level.rs).
class ByteLevel : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::string bytes;
    for (const auto& token : tokens) {
      std::string mapped;
      bool all = true;
      for (const auto& cp : code_points(token)) {
        const auto b = unicode_to_byte(cp.value);
        if (!b) {
          all = false;
          break;
        }
        mapped += static_cast<char>(*b);
      }
      bytes += all ? mapped : token;
    }
    return {utf8_lossy(bytes)};
  }
};

class Metaspace : public Decoder {
 public:
  Metaspace(const nlohmann::json& spec, const std::string& what)
      : replacement_(string_field(spec, "replacement", what)) {
    std::string scheme = "always";
    if (spec.contains("prepend_scheme")) scheme = string_field(spec, "prepend_scheme", what);
    if (!bool_field(spec, "add_prefix_space", true, what)) scheme = "never";
    TORCH_CHECK(scheme == "always" || scheme == "first" || scheme == "never", what,
                ": unknown prepend_scheme \"", scheme, "\"");
    strip_first_ = scheme != "never";
  }
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const std::string& token = tokens[i];
      for (size_t at = 0; at < token.size();) {
        if (token.compare(at, replacement_.size(), replacement_) == 0) {
          if (!(i == 0 && strip_first_)) out += ' ';
          at += replacement_.size();
        } else {
          out += token[at++];
        }
      }
      tokens[i] = std::move(out);
    }
    return tokens;
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

class Replace : public Decoder {
 public:
  Replace(const nlohmann::json& spec, const std::string& what)
      : pattern_(field(spec, "pattern", what), what),
        content_(string_field(spec, "content", what)) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (auto& token : tokens) token = pattern_.replace(token, content_);
    return tokens;
  }

 private:
  ReplacePattern pattern_;
  std::string content_;
};

// Runs of <0xXX> tokens become their bytes when those are valid UTF-8, else one U+FFFD per byte
// (decoders/byte_fallback.rs).
class ByteFallback : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (first_invalid_utf8(pending) == std::string::npos) {
        out.push_back(pending);
      } else {
        for (size_t i = 0; i < pending.size(); ++i) out.push_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (auto& token : tokens) {
      if (token.size() == 6 && token.compare(0, 3, "<0x") == 0 && token[5] == '>') {
        char* end = nullptr;
        const std::string hex = token.substr(3, 2);
        const long value = std::strtol(hex.c_str(), &end, 16);
        if (end == hex.c_str() + 2) {
          pending += static_cast<char>(value);
          continue;
        }
      }
      flush();
      out.push_back(std::move(token));
    }
    flush();
    return out;
  }
};

class Fuse : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::string joined;
    for (const auto& token : tokens) joined += token;
    return {joined};
  }
};

// Removes up to `start` leading and `stop` trailing `content` characters of every token.
class Strip : public Decoder {
 public:
  Strip(const nlohmann::json& spec, const std::string& what)
      : content_(string_field(spec, "content", what)),
        start_(int_field(spec, "start", what)),
        stop_(int_field(spec, "stop", what)) {
    const auto cps = code_points(content_);
    TORCH_CHECK(cps.size() == 1, what, ": \"content\" must be one character");
    content_cp_ = cps[0].value;
  }
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (auto& token : tokens) {
      const auto cps = code_points(token);
      size_t begin = 0, end = cps.size();
      for (int64_t i = 0; i < start_ && begin < end && cps[begin].value == content_cp_; ++i) {
        ++begin;
      }
      for (int64_t i = 0; i < stop_ && end > begin && cps[end - 1].value == content_cp_; ++i) {
        --end;
      }
      if (begin == end) {
        token.clear();
      } else {
        token = token.substr(cps[begin].offset,
                             cps[end - 1].offset + cps[end - 1].length - cps[begin].offset);
      }
    }
    return tokens;
  }

 private:
  std::string content_;
  char32_t content_cp_ = 0;
  int64_t start_, stop_;
};

class Sequence : public Decoder {
 public:
  explicit Sequence(std::vector<std::unique_ptr<Decoder>> parts) : parts_(std::move(parts)) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (const auto& part : parts_) tokens = part->decode_chain(std::move(tokens));
    return tokens;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const nlohmann::json& spec, const std::string& what) {
  if (spec.is_null()) return nullptr;
  const std::string kind = type_of(spec, what + " decoder");
  const std::string here = what + " decoder " + kind;
  if (kind == "ByteLevel") return std::make_unique<ByteLevel>();
  if (kind == "Metaspace") return std::make_unique<Metaspace>(spec, here);
  if (kind == "Replace") return std::make_unique<Replace>(spec, here);
  if (kind == "ByteFallback") return std::make_unique<ByteFallback>();
  if (kind == "Fuse") return std::make_unique<Fuse>();
  if (kind == "Strip") return std::make_unique<Strip>(spec, here);
  if (kind == "Sequence") {
    const auto& list = field(spec, "decoders", here);
    TORCH_CHECK(list.is_array(), here, ": \"decoders\" is not a list");
    std::vector<std::unique_ptr<Decoder>> parts;
    for (const auto& part : list) {
      auto made = make_decoder(part, what);
      if (made) parts.push_back(std::move(made));
    }
    return std::make_unique<Sequence>(std::move(parts));
  }
  TORCH_CHECK(false, what, ": decoder \"", kind,
              "\" is not supported (supported: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, "
              "Strip, Sequence)");
}

}  // namespace moeprune::text::detail
