#pragma once

// Tokenizers in C++, so text reaches a Hugging Face model without Python: the tokenizer.json of
// Hugging Face `tokenizers` (BPE models, byte-level as GPT-2/Qwen/DeepSeek/OLMoE ship them and
// Metaspace + byte fallback as Llama/Mixtral do, with their normalizers, pre-tokenizers,
// decoders, post-processors and added tokens) and SentencePiece's tokenizer.model (through
// Debian's libsentencepiece) where a folder has only that. A component the reader does not
// implement is refused by name, never approximated. docs/tokenizers.md lists what is supported.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moeprune::text {

/// What a tokenizer does; Tokenizer wraps one. Implementations are internal (csrc/text/).
class TokenizerBackend {
 public:
  virtual ~TokenizerBackend() = default;
  virtual std::vector<int64_t> encode(std::string_view text, bool add_special_tokens) const = 0;
  virtual std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual std::optional<int64_t> token_to_id(std::string_view token) const = 0;
  virtual std::optional<std::string> id_to_token(int64_t id) const = 0;
  virtual bool is_special(int64_t id) const = 0;
  virtual std::string describe() const = 0;
};

/// A loaded tokenizer; cheap to copy (shares the immutable backend), safe to use from several
/// threads at once.
class Tokenizer {
 public:
  explicit Tokenizer(std::shared_ptr<const TokenizerBackend> backend);

  /// A Hugging Face tokenizer.json.
  static Tokenizer from_json_file(const std::string& path);
  /// A SentencePiece model. add_bos / add_eos: whether encode(..., add_special_tokens = true)
  /// puts the model's bos / eos id around the text (Llama's defaults: bos only).
  static Tokenizer from_sentencepiece(const std::string& model_path, bool add_bos = true,
                                      bool add_eos = false);
  /// A tokenizer.json or a SentencePiece model, told apart by content, not name (Mistral ships
  /// SentencePiece models as tokenizer.model.v1 / .v3): JSON starts with '{' (after a byte-order
  /// mark or whitespace), a SentencePiece ModelProto with byte 0x0a (its first piece). Anything
  /// else is refused, naming the file and its first byte. SentencePiece with Llama's defaults.
  static Tokenizer from_file(const std::string& path);
  /// A model folder: its tokenizer.json, else its tokenizer.model with add_bos_token /
  /// add_eos_token from tokenizer_config.json when present. Refuses a folder with neither.
  static Tokenizer from_folder(const std::string& folder);

  /// Token ids of UTF-8 `text` (refused when not valid UTF-8). add_special_tokens: apply the
  /// post-processor (e.g. a leading <s>), as `tokenizers`' encode(add_special_tokens=True).
  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens = true) const;
  /// Text of `ids`; skip_special_tokens drops the special tokens first. Ids that are not in the
  /// vocabulary are refused. Invalid UTF-8 from byte tokens becomes U+FFFD, as in `tokenizers`.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const;

  /// One past the largest id (model vocabulary and added tokens).
  int64_t vocab_size() const;
  std::optional<int64_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int64_t id) const;
  /// Whether `id` is a special token (an added token marked special, or a SentencePiece control
  /// or unknown piece).
  bool is_special(int64_t id) const;
  /// One line saying what was loaded (kind, model, vocabulary size).
  std::string describe() const;

 private:
  std::shared_ptr<const TokenizerBackend> backend_;
};

}  // namespace moeprune::text
