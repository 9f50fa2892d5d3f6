#pragma once

// The two tokenizer backends behind moeprune::text::Tokenizer (internal).
#include <moeprune/text/tokenizer.h>

#include <memory>
#include <string>

namespace moeprune::text::detail {

/// A Hugging Face tokenizer.json (hf_tokenizer.cpp).
std::shared_ptr<const TokenizerBackend> load_tokenizer_json(const std::string& path);

/// A SentencePiece model through libsentencepiece (sentencepiece_tokenizer.cpp).
std::shared_ptr<const TokenizerBackend> load_sentencepiece(const std::string& path, bool add_bos,
                                                           bool add_eos);

}  // namespace moeprune::text::detail
