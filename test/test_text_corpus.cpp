// The fortune corpus: file discovery, the strfile format, the split by position, byte tokens and
// bits per byte, on hand-made files with hand-counted answers; and the Debian packages when they
// are installed.
#include "scratch_dir.h"

#include <moeprune/train/text_corpus.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

namespace data = moeprune::data;

namespace {

void write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// A fake fortune root with a German folder: two fortune files, an index, a link and a sub-folder
// that must all be ignored but the files.
std::string fake_root() {
  const auto root = test::scratch_dir() + "/fortunes";
  if (test::path_exists(root)) return root;
  REQUIRE(::mkdir(root.c_str(), 0755) == 0);
  REQUIRE(::mkdir((root + "/de").c_str(), 0755) == 0);
  REQUIRE(::mkdir((root + "/de/off").c_str(), 0755) == 0);
  write(root + "/de/zitate", "Eins\n%\nZwei\nZeilen\n%\n");
  write(root + "/de/anekdoten", "A\n%\nB\n%\n");
  write(root + "/de/anekdoten.dat", "index");
  write(root + "/de/off/derb", "x\n%\n");
  REQUIRE(::symlink("anekdoten", (root + "/de/anekdoten.u8").c_str()) == 0);
  REQUIRE(::symlink("zitate", (root + "/de/link").c_str()) == 0);
  write(root + "/brasil", "Olá\n%\n");
  return root;
}

}  // namespace

TEST_CASE("fortune_files lists a language's fortune files and nothing else", "[data]") {
  const auto root = fake_root();
  CHECK(data::fortune_files("de", root) ==
        std::vector<std::string>{root + "/de/anekdoten", root + "/de/zitate"});
  CHECK(data::fortune_files("pt", root) == std::vector<std::string>{root + "/brasil"});
  CHECK_THROWS_WITH(data::fortune_files("es", root),
                    Catch::Contains("no Spanish fortunes") && Catch::Contains("fortunes-es"));
  CHECK_THROWS_WITH(data::fortune_files("en", root), Catch::Contains("install Debian's fortunes"));
  CHECK_THROWS_WITH(
      data::fortune_files("xx", root),
      Catch::Contains("unknown fortune language 'xx'") && Catch::Contains("en, de, es, it, pt"));
}

TEST_CASE("read_fortunes splits the strfile format at lines holding only %", "[data]") {
  const auto path = test::scratch_dir() + "/strfile";
  // An empty entry (%\n%), a % inside a line, no separator at the end, CRLF-free bytes kept.
  write(path,
        "one\n%\ntwo\n50% off\n%\n%\nthree\x08"
        "e");
  CHECK(data::read_fortunes(path) == std::vector<std::string>{"one\n", "two\n50% off\n",
                                                              "three\x08"
                                                              "e"});
  CHECK_THROWS_WITH(data::read_fortunes(path + ".missing"), Catch::Contains("cannot open"));
}

TEST_CASE("split_by_position takes the test and validation sets from each file's end", "[data]") {
  // 25 fortunes: floor(2.5) = 2 test, 2 validation, 21 training; 9 fortunes: 0 and 0.
  std::vector<std::string> a, b;
  for (int i = 0; i < 25; ++i) a.push_back("a" + std::to_string(i));
  for (int i = 0; i < 9; ++i) b.push_back("b" + std::to_string(i));
  const auto s = data::split_by_position({a, b});
  REQUIRE(s.train.size() == 30);
  CHECK(s.train[20] == "a20");
  CHECK(s.train[21] == "b0");
  CHECK(s.validation == std::vector<std::string>{"a21", "a22"});
  CHECK(s.test == std::vector<std::string>{"a23", "a24"});
  const auto wide = data::split_by_position({a}, 0.2, 0.3);  // 7 test, 5 validation
  CHECK(wide.test.front() == "a18");
  CHECK(wide.validation.front() == "a13");
  CHECK(wide.train.size() == 13);
  CHECK_THROWS_WITH(data::split_by_position({a}, 0.5, 0.5), Catch::Contains("sum below 1"));
}

TEST_CASE("byte_tokens and bits_per_byte", "[data]") {
  // "é" is two UTF-8 bytes; each document ends with the end-of-text id.
  const auto t = data::byte_tokens({"\xc3\xa9", "a"});
  CHECK(torch::equal(t, torch::tensor({0xc3, 0xa9, 256, 97, 256}, torch::kLong)));
  // 6 bits in nats over 4 predicted tokens of which 3 are bytes: 2 bits per byte.
  const auto scored = torch::tensor({97, 256, 98, 99}, torch::kLong);
  CHECK(data::bits_per_byte(6 * std::log(2.0), scored) == Approx(2.0).epsilon(1e-12));
  CHECK_THROWS_WITH(data::bits_per_byte(1.0, torch::tensor({256}, torch::kLong)),
                    Catch::Contains("hold no byte"));
}

TEST_CASE("load_fortunes reads a language's files and splits them", "[data]") {
  const auto s = data::load_fortunes("de", fake_root(), 0.0, 0.5);
  // anekdoten (A, B) then zitate (Eins, Zwei Zeilen): one test fortune from each.
  CHECK(s.train == std::vector<std::string>{"A\n", "Eins\n"});
  CHECK(s.test == std::vector<std::string>{"B\n", "Zwei\nZeilen\n"});
}

TEST_CASE("the Debian fortune packages split as documented", "[data][fortunes]") {
  if (!test::path_exists(std::string(data::kFortuneDir) + "/de")) {
    WARN("[moeprune-skip] fortunes-de is not installed (scripts/setup installs it)");
    return;
  }
  // docs/reproduction-lm.md: 10% validation and 10% test from the end of every file.
  const auto s = data::load_fortunes("de");
  const auto total = s.train.size() + s.validation.size() + s.test.size();
  CHECK(total > 5000);
  CHECK(static_cast<double>(s.test.size()) / static_cast<double>(total) ==
        Approx(0.1).margin(0.01));
  for (const auto& doc : s.test) {
    REQUIRE(!doc.empty());
    REQUIRE(doc.find("\n%\n") == std::string::npos);
  }
}
