// A SentencePiece model (tokenizer.model) through Debian's libsentencepiece. The text is encoded
// as SentencePiece does it (spm_encode: control pieces such as "<s>" in the text are plain text);
// encode(add_special_tokens) adds the bos / eos ids around it as Llama's tokenizer does, and
// decode follows SentencePiece (control pieces decode to nothing).
#include <c10/util/Exception.h>
#include <sentencepiece_processor.h>

#include <sstream>

#include "backends.h"
#include "utf8.h"

namespace moeprune::text::detail {
namespace {

class SentencePieceTokenizer : public TokenizerBackend {
 public:
  SentencePieceTokenizer(const std::string& path, bool add_bos, bool add_eos)
      : path_(path), add_bos_(add_bos), add_eos_(add_eos) {
    const auto status = processor_.Load(path);
    TORCH_CHECK(status.ok(), path, ": not a SentencePiece model: ", status.ToString());
    TORCH_CHECK(!add_bos || processor_.bos_id() >= 0, path,
                ": add_bos is set but the model has no bos piece");
    TORCH_CHECK(!add_eos || processor_.eos_id() >= 0, path,
                ": add_eos is set but the model has no eos piece");
  }

  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens) const override {
    const size_t bad = first_invalid_utf8(text);
    TORCH_CHECK(bad == std::string_view::npos, "tokenizer ", path_,
                ": the text is not valid UTF-8 (first bad byte at offset ", bad, ")");
    std::vector<int> pieces;
    const auto status = processor_.Encode(text, &pieces);
    TORCH_CHECK(status.ok(), "tokenizer ", path_, ": ", status.ToString());
    std::vector<int64_t> ids;
    ids.reserve(pieces.size() + 2);
    if (add_special_tokens && add_bos_) ids.push_back(processor_.bos_id());
    ids.insert(ids.end(), pieces.begin(), pieces.end());
    if (add_special_tokens && add_eos_) ids.push_back(processor_.eos_id());
    return ids;
  }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override {
    std::vector<int> kept;
    kept.reserve(ids.size());
    for (const int64_t id : ids) {
      TORCH_CHECK(id >= 0 && id < vocab_size(), "tokenizer ", path_, ": id ", id,
                  " is not in the vocabulary (", vocab_size(), " ids)");
      if (skip_special_tokens && is_special(id)) continue;
      kept.push_back(static_cast<int>(id));
    }
    std::string text;
    const auto status = processor_.Decode(kept, &text);
    TORCH_CHECK(status.ok(), "tokenizer ", path_, ": ", status.ToString());
    return text;
  }

  int64_t vocab_size() const override { return processor_.GetPieceSize(); }

  std::optional<int64_t> token_to_id(std::string_view token) const override {
    const int id = processor_.PieceToId(token);
    // PieceToId answers the unknown id for a piece it does not have.
    if (id < 0 || (processor_.IsUnknown(id) && processor_.IdToPiece(id) != token)) {
      return std::nullopt;
    }
    return id;
  }

  std::optional<std::string> id_to_token(int64_t id) const override {
    if (id < 0 || id >= vocab_size()) return std::nullopt;
    return processor_.IdToPiece(static_cast<int>(id));
  }

  bool is_special(int64_t id) const override {
    if (id < 0 || id >= vocab_size()) return false;
    return processor_.IsControl(static_cast<int>(id)) || processor_.IsUnknown(static_cast<int>(id));
  }

  std::string describe() const override {
    std::ostringstream out;
    out << path_ << ": SentencePiece, " << vocab_size() << " ids" << (add_bos_ ? ", adds bos" : "")
        << (add_eos_ ? ", adds eos" : "");
    return out.str();
  }

 private:
  std::string path_;
  bool add_bos_, add_eos_;
  sentencepiece::SentencePieceProcessor processor_;
};

}  // namespace

std::shared_ptr<const TokenizerBackend> load_sentencepiece(const std::string& path, bool add_bos,
                                                           bool add_eos) {
  return std::make_shared<SentencePieceTokenizer>(path, add_bos, add_eos);
}

}  // namespace moeprune::text::detail
