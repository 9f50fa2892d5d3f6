// A Hugging Face tokenizer.json: added tokens, normalizer, pre-tokenizer, BPE model and
// post-processor for encoding; the decoder for decoding (tokenizer/mod.rs of tokenizers).
#include <c10/util/Exception.h>

#include <fstream>
#include <sstream>

#include "added_vocabulary.h"
#include "backends.h"
#include "bpe_model.h"
#include "decoders.h"
#include "io/json.h"
#include "json_fields.h"
#include "normalizers.h"
#include "post_processors.h"
#include "pre_tokenizers.h"
#include "utf8.h"

namespace moeprune::text::detail {
namespace {

class HfTokenizer : public TokenizerBackend {
 public:
  HfTokenizer(const nlohmann::json& spec, const std::string& path)
      : path_(path),
        normalizer_(make_normalizer(spec.value("normalizer", nlohmann::json()), path)),
        pre_tokenizer_(make_pre_tokenizer(spec.value("pre_tokenizer", nlohmann::json()), path)),
        model_(field(spec, "model", path), path + " model"),
        post_processor_(make_post_processor(spec.value("post_processor", nlohmann::json()), path)),
        decoder_(make_decoder(spec.value("decoder", nlohmann::json()), path)),
        added_(spec.value("added_tokens", nlohmann::json()), normalizer_.get(), path) {}

  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens) const override {
    const size_t bad = first_invalid_utf8(text);
    TORCH_CHECK(bad == std::string_view::npos, "tokenizer ", path_,
                ": the text is not valid UTF-8 (first bad byte at offset ", bad, ")");
    Pieces pieces = added_.extract_and_normalize(text, normalizer_.get());
    if (pre_tokenizer_) pre_tokenizer_->pre_tokenize(pieces);
    std::vector<int64_t> ids;
    ids.reserve(text.size() / 2 + 4);
    for (const auto& piece : pieces) {
      if (piece.id) {
        ids.push_back(*piece.id);
      } else {
        model_.tokenize(piece.text, ids);
      }
    }
    if (add_special_tokens && post_processor_) post_processor_->process(ids);
    return ids;
  }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (const int64_t id : ids) {
      const std::string* token = token_of(id);
      TORCH_CHECK(token != nullptr, "tokenizer ", path_, ": id ", id, " is not in the vocabulary (",
                  vocab_size(), " ids)");
      if (skip_special_tokens && added_.is_special_content(*token)) continue;
      tokens.push_back(*token);
    }
    if (!decoder_) {  // tokenizers joins the tokens with spaces when there is no decoder
      std::string joined;
      for (size_t i = 0; i < tokens.size(); ++i) joined += (i ? " " : "") + tokens[i];
      return joined;
    }
    std::string text;
    for (const auto& part : decoder_->decode_chain(std::move(tokens))) text += part;
    return text;
  }

  int64_t vocab_size() const override { return std::max(model_.size(), added_.end_id()); }

  std::optional<int64_t> token_to_id(std::string_view token) const override {
    if (auto id = added_.id_of(token)) return id;
    return model_.token_to_id(token);
  }

  std::optional<std::string> id_to_token(int64_t id) const override {
    const std::string* token = token_of(id);
    if (token == nullptr) return std::nullopt;
    return *token;
  }

  bool is_special(int64_t id) const override {
    const std::string* token = token_of(id);
    return token != nullptr && added_.is_special_content(*token);
  }

  std::string describe() const override {
    std::ostringstream out;
    out << path_ << ": tokenizer.json, BPE, " << vocab_size() << " ids";
    return out.str();
  }

 private:
  const std::string* token_of(int64_t id) const {
    if (const AddedToken* added = added_.find(id)) return &added->content;
    return model_.id_to_token(id);
  }

  std::string path_;
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  BpeModel model_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<Decoder> decoder_;
  AddedVocabulary added_;
};

}  // namespace

std::shared_ptr<const TokenizerBackend> load_tokenizer_json(const std::string& path) {
  const auto spec = io::read_json_file(path, "the tokenizer file");
  io::expect_object(spec, path);
  return std::make_shared<HfTokenizer>(spec, path);
}

}  // namespace moeprune::text::detail
