#pragma once

// tokenizer.json decoders (internal): ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip
// and Sequence of these, each a step on the list of token strings (decoders/ of Hugging Face
// tokenizers); the text is the concatenation of the last step's output.
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

namespace moeprune::text::detail {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual std::vector<std::string> decode_chain(std::vector<std::string> tokens) const = 0;
};

/// The decoder a tokenizer.json "decoder" object describes; null for JSON null. Refuses an
/// unsupported type by name.
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& spec, const std::string& what);

}  // namespace moeprune::text::detail
