// io::write_file_atomically: the one way reports, plans, logs and results are written. Checked
// against the file system itself (what is on disk afterwards), not against the writer's own view.
#include "scratch_dir.h"

#include <moeprune/io/atomic_write.h>

#include <catch2/catch.hpp>

#include <fstream>
#include <iterator>
#include <string>

namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_CASE("write_file_atomically writes, replaces and creates the folders") {
  const auto dir = test::scratch_dir() + "/atomic_write";
  const auto path = dir + "/a/b/report.json";
  moeprune::io::write_file_atomically(path, "first\n");
  CHECK(read_all(path) == "first\n");
  // Binary contents, a NUL included, replace the old file whole.
  const std::string second("x\0y\nz", 5);
  moeprune::io::write_file_atomically(path, second);
  CHECK(read_all(path) == second);
  moeprune::io::write_file_atomically(path, "");
  CHECK(read_all(path).empty());
  CHECK(test::temporaries_in(dir + "/a/b").empty());
}

TEST_CASE("write_file_atomically refuses with the path and leaves the old file") {
  const auto dir = test::scratch_dir() + "/atomic_refusals";
  const auto path = dir + "/keep.txt";
  moeprune::io::write_file_atomically(path, "old");
  SECTION("a folder in the way") {
    CHECK_THROWS_WITH(moeprune::io::write_file_atomically(dir, "x"),
                      Catch::Contains(dir) && Catch::Contains("is a folder"));
  }
  SECTION("a file where a parent folder should be") {
    CHECK_THROWS_WITH(moeprune::io::write_file_atomically(path + "/inner.txt", "x"),
                      Catch::Contains(path + "/inner.txt") && Catch::Contains("cannot create"));
  }
  CHECK(read_all(path) == "old");
  CHECK(test::temporaries_in(dir).empty());
}
