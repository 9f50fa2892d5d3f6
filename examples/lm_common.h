#pragma once

// What the language-model examples share. Token streams: a file of whitespace-separated token
// ids ("ids", <moeprune/text/token_file.h>; `moeprune tokenize --out` makes one from text), or any
// file whose bytes are the tokens ("bytes", for byte-level models with a vocabulary of at least
// 256).
#include <moeprune/text/token_file.h>

#include <torch/torch.h>

#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

namespace examples {

inline torch::Tensor read_tokens(const std::string& path, const std::string& format) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), path, ": cannot open");
  std::vector<int64_t> ids;
  if (format == "bytes") {
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (const char c : bytes) {
      ids.push_back(static_cast<unsigned char>(c));
    }
  } else {
    TORCH_CHECK(format == "ids", "token format should be ids or bytes, got ", format);
    ids = moeprune::text::read_token_ids(path);
  }
  TORCH_CHECK(ids.size() >= 2, path, ": ", ids.size(), " tokens; at least 2 are needed");
  return torch::tensor(ids, torch::kLong);
}

// One line about a model (its pretty_print, not the whole module tree).
inline std::string summary(const torch::nn::Module& model) {
  std::ostringstream s;
  model.pretty_print(s);
  return s.str();
}

// "1,2,3" or "1 2 3" -> ids.
inline torch::Tensor parse_ids(const std::string& text) {
  std::string spaced = text;
  for (auto& c : spaced) {
    c = c == ',' ? ' ' : c;
  }
  std::istringstream in(spaced);
  std::vector<int64_t> ids;
  for (int64_t id; in >> id;) {
    ids.push_back(id);
  }
  TORCH_CHECK(in.eof() && !ids.empty(),
              "token ids should be integers separated by commas or spaces, got '", text, "'");
  return torch::tensor(ids, torch::kLong);
}

inline torch::Dtype parse_dtype(const std::string& name) {
  if (name == "fp32" || name == "float32") {
    return torch::kFloat;
  }
  if (name == "bf16" || name == "bfloat16") {
    return torch::kBFloat16;
  }
  TORCH_CHECK(false, "dtype should be fp32 or bf16, got ", name);
}

}  // namespace examples
