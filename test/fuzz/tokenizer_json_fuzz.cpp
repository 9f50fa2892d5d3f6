// A tokenizer.json (Tokenizer::from_json_file) and a text encoded with it, both arbitrary: the
// first input byte is the text's length n, the next n bytes the text, the rest the JSON. Loading
// may refuse the JSON and encode may refuse the text (invalid UTF-8, a character the model has no
// token for), each with a c10::Error; the ids encode returns must be in the vocabulary and
// decode must accept them (a refusal there is a finding).
#include "fuzz_files.h"
#include "fuzz_target.h"

#include <moeprune/text/tokenizer.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

MOEPRUNE_FUZZ_TARGET(tokenizer_json) {
  if (size == 0) {
    return;
  }
  const size_t n = std::min<size_t>(data[0], size - 1);
  const std::string text(reinterpret_cast<const char*>(data + 1), n);
  const std::string path = moeprune_fuzz::scratch_dir() + "/tokenizer.json";
  moeprune_fuzz::write_bytes(path, data + 1 + n, size - 1 - n);
  moeprune_fuzz::refused_or_accepted([&] {
    const auto tokenizer = moeprune::text::Tokenizer::from_json_file(path);
    for (const bool special : {true, false}) {
      std::vector<int64_t> ids;
      try {
        ids = tokenizer.encode(text, special);
      } catch (const c10::Error&) {
        ++moeprune_fuzz::refusals();
        continue;
      }
      for (const auto id : ids) {
        if (!tokenizer.id_to_token(id).has_value()) {
          std::fprintf(stderr, "encode returned id %lld, which has no token\n",
                       static_cast<long long>(id));
          std::abort();
        }
      }
      try {
        (void)tokenizer.decode(ids, /*skip_special_tokens=*/false);
        (void)tokenizer.decode(ids, /*skip_special_tokens=*/true);
      } catch (const c10::Error& e) {
        std::fprintf(stderr, "decode refused the ids encode gave: %s\n", e.what());
        std::abort();
      }
    }
  });
}
