#include <moeprune/train/text_corpus.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>

#include <dirent.h>
#include <sys/stat.h>

namespace moeprune::data {
namespace {

// The fortunes package's files in Debian 12 (fortune-mod 1:1.99.1-7.3). A fixed list, since the
// top folder also holds other packages' files (fortunes-br's "brasil", links into it/, ...).
const std::vector<std::string>& english_files() {
  static const std::vector<std::string> files = {
      "art",          "ascii-art", "computers",   "cookie",    "debian",        "definitions",
      "disclaimer",   "drugs",     "education",   "ethnic",    "food",          "goedel",
      "humorists",    "kids",      "knghtbrd",    "law",       "linux",         "linuxcookie",
      "love",         "magic",     "medicine",    "men-women", "miscellaneous", "news",
      "paradoxum",    "people",    "perl",        "pets",      "platitudes",    "politics",
      "pratchett",    "science",   "songs-poems", "sports",    "startrek",      "tao",
      "translate-me", "wisdom",    "work",        "zippy"};
  return files;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

const FortuneLanguage& language_of(const std::string& code) {
  for (const auto& l : fortune_languages()) {
    if (l.code == code) {
      return l;
    }
  }
  std::string known;
  for (const auto& l : fortune_languages()) {
    known += (known.empty() ? "" : ", ") + l.code;
  }
  TORCH_CHECK(false, "unknown fortune language '", code, "' (known: ", known, ")");
}

}  // namespace

const std::vector<FortuneLanguage>& fortune_languages() {
  static const std::vector<FortuneLanguage> languages = {
      {"en", "English", "fortunes"},
      {"de", "German", "fortunes-de"},
      {"es", "Spanish", "fortunes-es"},
      {"it", "Italian", "fortunes-it"},
      {"pt", "Portuguese (Brazil)", "fortunes-br"}};
  return languages;
}

std::vector<std::string> fortune_files(const std::string& code, const std::string& root) {
  const auto& language = language_of(code);
  std::vector<std::string> files;
  if (code == "en" || code == "pt") {
    const std::vector<std::string> names =
        code == "en" ? english_files() : std::vector<std::string>{"brasil"};
    for (const auto& name : names) {
      const auto path = root + "/" + name;
      struct stat st {};
      if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
        files.push_back(path);
      }
    }
  } else if (DIR* dir = ::opendir((root + "/" + code).c_str())) {
    // POSIX rather than std::filesystem's iterator: libtorch exports its own std::filesystem
    // symbols (test/scratch_dir.h says more).
    while (const dirent* entry = ::readdir(dir)) {
      const std::string name = entry->d_name;
      const auto path = root + "/" + code + "/" + name;
      struct stat st {};
      if (::lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && !ends_with(name, ".dat") &&
          !ends_with(name, ".u8")) {
        files.push_back(path);
      }
    }
    ::closedir(dir);
  }
  std::sort(files.begin(), files.end());
  TORCH_CHECK(!files.empty(), "no ", language.name, " fortunes under ", root, ": install Debian's ",
              language.package, " package (apt-get install ", language.package, ")");
  return files;
}

std::vector<std::string> read_fortunes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), path, ": cannot open");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  TORCH_CHECK(!in.bad(), path, ": read failed");
  std::vector<std::string> out;
  std::string entry;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    end = end == std::string::npos ? text.size() : end + 1;
    const auto line = text.substr(begin, end - begin);
    if (line == "%\n" || line == "%") {
      if (!entry.empty()) out.push_back(entry);
      entry.clear();
    } else {
      entry += line;
    }
    begin = end;
  }
  if (!entry.empty()) out.push_back(entry);
  return out;
}

TextSplits split_by_position(const std::vector<std::vector<std::string>>& files, double validation,
                             double test) {
  TORCH_CHECK(validation >= 0 && test >= 0 && validation + test < 1,
              "split_by_position: validation and test fractions should be >= 0 with a sum below "
              "1, got ",
              validation, " and ", test);
  TextSplits out;
  for (const auto& docs : files) {
    const auto n = static_cast<int64_t>(docs.size());
    const auto n_test = static_cast<int64_t>(std::floor(static_cast<double>(n) * test));
    const auto n_val = static_cast<int64_t>(std::floor(static_cast<double>(n) * validation));
    const int64_t n_train = n - n_test - n_val;
    for (int64_t i = 0; i < n; ++i) {
      auto& set = i < n_train ? out.train : i < n_train + n_val ? out.validation : out.test;
      set.push_back(docs[static_cast<size_t>(i)]);
    }
  }
  return out;
}

TextSplits load_fortunes(const std::string& code, const std::string& root, double validation,
                         double test) {
  std::vector<std::vector<std::string>> files;
  for (const auto& path : fortune_files(code, root)) {
    files.push_back(read_fortunes(path));
  }
  return split_by_position(files, validation, test);
}

torch::Tensor byte_tokens(const std::vector<std::string>& documents) {
  size_t total = 0;
  for (const auto& d : documents) total += d.size() + 1;
  auto out = torch::empty({static_cast<int64_t>(total)}, torch::kLong);
  auto* p = out.data_ptr<int64_t>();
  for (const auto& d : documents) {
    for (const char c : d) *p++ = static_cast<unsigned char>(c);
    *p++ = kEndOfText;
  }
  return out;
}

double bits_per_byte(double nll_sum, const torch::Tensor& scored) {
  TORCH_CHECK(scored.dim() == 1 && scored.scalar_type() == torch::kLong,
              "bits_per_byte: the scored tokens should be [N] int64, got ", scored.sizes(), " ",
              scored.scalar_type());
  const auto bytes = scored.lt(256).sum().item<int64_t>();
  TORCH_CHECK(bytes > 0, "bits_per_byte: the ", scored.size(0), " scored tokens hold no byte");
  return nll_sum / std::log(2.0) / static_cast<double>(bytes);
}

}  // namespace moeprune::data
