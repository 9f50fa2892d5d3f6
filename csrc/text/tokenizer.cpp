#include <moeprune/text/tokenizer.h>

#include <c10/util/Exception.h>
#include <sys/stat.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "backends.h"
#include "io/json.h"
#include "json_fields.h"

namespace moeprune::text {
namespace {

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

Tokenizer::Tokenizer(std::shared_ptr<const TokenizerBackend> backend)
    : backend_(std::move(backend)) {
  TORCH_CHECK(backend_ != nullptr, "Tokenizer: no backend");
}

Tokenizer Tokenizer::from_json_file(const std::string& path) {
  return Tokenizer(detail::load_tokenizer_json(path));
}

Tokenizer Tokenizer::from_sentencepiece(const std::string& model_path, bool add_bos, bool add_eos) {
  TORCH_CHECK(is_file(model_path), model_path, ": no such file (a SentencePiece model)");
  return Tokenizer(detail::load_sentencepiece(model_path, add_bos, add_eos));
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  TORCH_CHECK(is_file(path), path, ": no such file (a tokenizer.json or SentencePiece model)");
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), path, ": cannot open");
  char head[4096];
  in.read(head, sizeof(head));
  const auto n = static_cast<size_t>(in.gcount());
  size_t i = n >= 3 && std::string_view(head, 3) == "\xEF\xBB\xBF" ? 3 : 0;
  while (i < n && (head[i] == ' ' || head[i] == '\t' || head[i] == '\n' || head[i] == '\r')) ++i;
  TORCH_CHECK(i < n, path, ": empty; expected a tokenizer.json or a SentencePiece model");
  // A serialized ModelProto starts with its repeated field 1 (pieces), length-delimited: tag 0x0a,
  // which is also '\n'. Only a first piece of 123 bytes would read as "\n{": then JSON is tried
  // first and SentencePiece if that fails.
  const bool json = head[i] == '{';
  const bool proto = static_cast<unsigned char>(head[0]) == 0x0a;
  if (json && proto) {
    try {
      return from_json_file(path);
    } catch (const c10::Error&) {
      return from_sentencepiece(path);
    }
  }
  if (json) return from_json_file(path);
  TORCH_CHECK(proto, path,
              ": neither a tokenizer.json (which starts with '{') nor a SentencePiece model (whose "
              "first byte is 0x0a); its first byte is 0x",
              "0123456789abcdef"[static_cast<unsigned char>(head[i]) >> 4],
              "0123456789abcdef"[static_cast<unsigned char>(head[i]) & 15]);
  return from_sentencepiece(path);
}

Tokenizer Tokenizer::from_folder(const std::string& folder) {
  const std::string json_path = folder + "/tokenizer.json";
  if (is_file(json_path)) return from_json_file(json_path);
  const std::string model_path = folder + "/tokenizer.model";
  TORCH_CHECK(is_file(model_path), folder,
              ": no tokenizer.json or tokenizer.model (the tokenizer of a Hugging Face model "
              "folder)");
  // Llama's tokenizer_config.json says whether bos / eos go around the text; Llama's defaults
  // (bos, no eos) otherwise.
  bool add_bos = true, add_eos = false;
  const std::string config_path = folder + "/tokenizer_config.json";
  if (is_file(config_path)) {
    const auto config = io::read_json_file(config_path);
    add_bos = detail::bool_field(config, "add_bos_token", add_bos, config_path);
    add_eos = detail::bool_field(config, "add_eos_token", add_eos, config_path);
  }
  return from_sentencepiece(model_path, add_bos, add_eos);
}

std::vector<int64_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  return backend_->encode(text, add_special_tokens);
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  return backend_->decode(ids, skip_special_tokens);
}

int64_t Tokenizer::vocab_size() const {
  return backend_->vocab_size();
}

std::optional<int64_t> Tokenizer::token_to_id(std::string_view token) const {
  return backend_->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int64_t id) const {
  return backend_->id_to_token(id);
}

bool Tokenizer::is_special(int64_t id) const {
  return backend_->is_special(id);
}

std::string Tokenizer::describe() const {
  return backend_->describe();
}

}  // namespace moeprune::text
