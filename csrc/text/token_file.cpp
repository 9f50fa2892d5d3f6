#include <moeprune/text/token_file.h>

#include <c10/util/Exception.h>

#include <fstream>
#include <stdexcept>

namespace moeprune::text {

std::vector<int64_t> read_token_ids(const std::string& path) {
  std::ifstream in(path);
  TORCH_CHECK(in.good(), path, ": cannot open");
  std::vector<int64_t> ids;
  std::string word;
  while (in >> word) {
    size_t used = 0;
    int64_t id = -1;
    try {
      id = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    TORCH_CHECK(used == word.size() && id >= 0, path, ": token ", ids.size(), " is '", word,
                "', not a non-negative integer id");
    ids.push_back(id);
  }
  return ids;
}

}  // namespace moeprune::text
