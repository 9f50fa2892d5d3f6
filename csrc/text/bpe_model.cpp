#include "bpe_model.h"

#include <c10/util/Exception.h>

#include <cstdio>
#include <queue>

#include "json_fields.h"
#include "utf8.h"

namespace moeprune::text::detail {
namespace {

uint64_t pair_key(int64_t left, int64_t right) {
  return (static_cast<uint64_t>(left) << 32) | static_cast<uint64_t>(right);
}

struct Symbol {
  int64_t id;
  int64_t prev, next;
  size_t length;  // bytes of the word it covers; 0 once merged into its left neighbour
};

struct QueuedMerge {
  int64_t rank;
  size_t pos;
  int64_t id;
  // std::priority_queue pops the largest: the lowest rank, then the leftmost (word.rs, Merge).
  bool operator<(const QueuedMerge& other) const {
    if (rank != other.rank) return rank > other.rank;
    return pos > other.pos;
  }
};

}  // namespace

BpeModel::BpeModel(const nlohmann::json& spec, const std::string& what) {
  const std::string kind = spec.contains("type") ? type_of(spec, what) : "BPE";
  TORCH_CHECK(kind == "BPE", what, ": model \"", kind,
              "\" is not supported (only BPE; WordPiece, WordLevel and Unigram are not)");
  if (spec.contains("dropout") && !spec.at("dropout").is_null()) {
    TORCH_CHECK(spec.at("dropout").is_number() && spec.at("dropout").get<double>() == 0.0, what,
                ": BPE dropout ", spec.at("dropout").dump(),
                " is a training-time randomisation; only null or 0 is supported");
  }
  const auto& vocab = field(spec, "vocab", what);
  TORCH_CHECK(vocab.is_object(), what, ": \"vocab\" is not an object");
  for (const auto& [token, value] : vocab.items()) {
    TORCH_CHECK(value.is_number_integer() && value.get<int64_t>() >= 0 &&
                    value.get<int64_t>() < (int64_t{1} << 31),
                what, ": vocab entry \"", token, "\" has id ", value.dump(),
                ", not a non-negative 32-bit integer");
    const int64_t id = value.get<int64_t>();
    if (static_cast<size_t>(id) >= tokens_.size()) {
      tokens_.resize(id + 1);
      present_.resize(id + 1, false);
    }
    TORCH_CHECK(!present_[id], what, ": vocab id ", id, " is given to both \"", tokens_[id],
                "\" and \"", token, "\"");
    tokens_[id] = token;
    present_[id] = true;
    vocab_.emplace(token, id);
  }
  if (spec.contains("continuing_subword_prefix") &&
      !spec.at("continuing_subword_prefix").is_null()) {
    continuing_prefix_ = string_field(spec, "continuing_subword_prefix", what);
  }
  if (spec.contains("end_of_word_suffix") && !spec.at("end_of_word_suffix").is_null()) {
    end_suffix_ = string_field(spec, "end_of_word_suffix", what);
  }
  fuse_unk_ = bool_field(spec, "fuse_unk", false, what);
  byte_fallback_ = bool_field(spec, "byte_fallback", false, what);
  ignore_merges_ = bool_field(spec, "ignore_merges", false, what);
  if (spec.contains("unk_token") && !spec.at("unk_token").is_null()) {
    const std::string unk = string_field(spec, "unk_token", what);
    unk_id_ = lookup(unk);
    TORCH_CHECK(unk_id_.has_value(), what, ": unk_token \"", unk, "\" is not in the vocabulary");
  }
  if (byte_fallback_) {
    byte_ids_.assign(256, -1);
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      if (auto id = lookup(name)) byte_ids_[b] = *id;
    }
  }
  const auto& merges = field(spec, "merges", what);
  TORCH_CHECK(merges.is_array(), what, ": \"merges\" is not a list");
  int64_t rank = 0;
  for (const auto& merge : merges) {
    std::string left, right;
    if (merge.is_string()) {  // the older "left right" form
      const auto text = merge.get<std::string>();
      const auto space = text.find(' ');
      TORCH_CHECK(space != std::string::npos && text.find(' ', space + 1) == std::string::npos,
                  what, ": merge ", rank, " \"", text, "\" is not two tokens separated by a space");
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else {
      TORCH_CHECK(
          merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string(),
          what, ": merge ", rank, " is ", merge.dump(), ", not a pair of tokens");
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    }
    const auto left_id = lookup(left), right_id = lookup(right);
    TORCH_CHECK(left_id && right_id, what, ": merge ", rank, " (\"", left, "\", \"", right,
                "\") uses a token that is not in the vocabulary");
    std::string joined = left;
    if (!continuing_prefix_.empty() && right.rfind(continuing_prefix_, 0) == 0) {
      joined += right.substr(continuing_prefix_.size());
    } else {
      joined += right;
    }
    const auto joined_id = lookup(joined);
    TORCH_CHECK(joined_id.has_value(), what, ": merge ", rank, " gives \"", joined,
                "\", which is not in the vocabulary");
    // A repeated pair takes its later rank, as in tokenizers' map built from the list.
    merges_[pair_key(*left_id, *right_id)] = Merge{rank, *joined_id};
    ++rank;
  }
}

std::optional<int64_t> BpeModel::lookup(std::string_view token) const {
  const auto it = vocab_.find(std::string(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

std::optional<int64_t> BpeModel::token_to_id(std::string_view token) const {
  return lookup(token);
}

const std::string* BpeModel::id_to_token(int64_t id) const {
  if (id < 0 || id >= size() || !present_[id]) return nullptr;
  return &tokens_[id];
}

void BpeModel::tokenize(std::string_view word, std::vector<int64_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto id = lookup(word)) {
      out.push_back(*id);
      return;
    }
  }
  // The word's characters as symbols (model.rs, merge_word).
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&](int64_t id, size_t length) {
    const auto n = static_cast<int64_t>(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back({id, n - 1, -1, length});
  };
  int64_t unk_id = -1;  // a pending unknown token (-1: none) and the bytes it covers
  size_t unk_length = 0;
  const auto chars = code_points(word);
  for (size_t i = 0; i < chars.size(); ++i) {
    std::string s(word.substr(chars[i].offset, chars[i].length));
    if (i > 0 && !continuing_prefix_.empty()) s = continuing_prefix_ + s;
    if (i + 1 == chars.size() && !end_suffix_.empty()) s += end_suffix_;
    const size_t length = chars[i].length;
    if (auto id = lookup(s)) {
      if (unk_id >= 0) {
        add(unk_id, unk_length);
        unk_id = -1;
      }
      add(*id, length);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char b : s) all = all && byte_ids_[b] >= 0;
      if (all) {
        // As model.rs does, a pending unknown token is not flushed here.
        for (unsigned char b : s) add(byte_ids_[b], 1);
        continue;
      }
    }
    if (unk_id_) {
      if (unk_id >= 0 && fuse_unk_) {
        unk_length += length;
      } else {
        if (unk_id >= 0) add(unk_id, unk_length);
        unk_id = *unk_id_;
        unk_length = length;
      }
    }
  }
  if (unk_id >= 0) add(unk_id, unk_length);

  // Merges, lowest rank first (word.rs, merge_all without dropout).
  std::priority_queue<QueuedMerge> queue;
  auto merge_of = [&](int64_t left, int64_t right) -> const Merge* {
    const auto it = merges_.find(pair_key(left, right));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const Merge* m = merge_of(symbols[i].id, symbols[i + 1].id)) {
      queue.push({m->rank, i, m->id});
    }
  }
  while (!queue.empty()) {
    const QueuedMerge top = queue.top();
    queue.pop();
    Symbol& current = symbols[top.pos];
    if (current.length == 0 || current.next < 0) continue;
    const auto next_pos = static_cast<size_t>(current.next);
    const Symbol right = symbols[next_pos];
    const Merge* still = merge_of(current.id, right.id);
    if (still == nullptr || still->id != top.id) continue;  // an expired entry
    current.id = top.id;
    current.length += right.length;
    current.next = right.next;
    symbols[next_pos].length = 0;
    if (right.next >= 0) symbols[static_cast<size_t>(right.next)].prev = top.pos;
    if (current.prev >= 0) {
      const auto prev = static_cast<size_t>(current.prev);
      if (const Merge* m = merge_of(symbols[prev].id, current.id)) {
        queue.push({m->rank, prev, m->id});
      }
    }
    if (current.next >= 0) {
      if (const Merge* m = merge_of(current.id, symbols[static_cast<size_t>(current.next)].id)) {
        queue.push({m->rank, top.pos, m->id});
      }
    }
  }
  for (const auto& symbol : symbols) {
    if (symbol.length > 0) out.push_back(symbol.id);
  }
}

}  // namespace moeprune::text::detail
