#pragma once

// The BPE model of a tokenizer.json (internal): vocabulary, ranked merges applied lowest rank
// first (leftmost on ties), byte fallback to <0xXX> tokens, the unknown token (fused or not),
// ignore_merges, continuing-subword prefix and end-of-word suffix (models/bpe/model.rs and
// word.rs of Hugging Face tokenizers).
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace moeprune::text::detail {

class BpeModel {
 public:
  /// From the "model" object; refuses a non-BPE model by its type, dropout > 0, merges whose
  /// parts or result are not in the vocabulary, and duplicate ids.
  BpeModel(const nlohmann::json& spec, const std::string& what);

  /// Appends the ids of one pre-tokenized word.
  void tokenize(std::string_view word, std::vector<int64_t>& out) const;

  std::optional<int64_t> token_to_id(std::string_view token) const;
  /// The token of `id`, or null when the vocabulary has no such id.
  const std::string* id_to_token(int64_t id) const;
  /// One past the largest id.
  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }

 private:
  struct Merge {
    int64_t rank, id;
  };
  std::optional<int64_t> lookup(std::string_view token) const;

  std::unordered_map<std::string, int64_t> vocab_;
  std::vector<std::string> tokens_;  // by id; "" for ids the vocabulary skips
  std::vector<bool> present_;
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> merge
  std::optional<int64_t> unk_id_;
  std::string continuing_prefix_, end_suffix_;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  std::vector<int64_t> byte_ids_;  // <0xXX> ids when byte_fallback, -1 where missing
};

}  // namespace moeprune::text::detail
