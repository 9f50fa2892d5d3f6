#include <moeprune/io/safetensors.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include "scratch_dir.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

namespace st = moeprune::safetensors;
using Catch::Matchers::Contains;

namespace {

const std::string kFixtures = MOEPRUNE_TEST_FIXTURES "/hf";

std::string scratch() {
  return test::scratch_dir("moeprune-safetensors");
}
bool exists(const std::string& path) {
  return test::path_exists(path);
}

// Writes a safetensors file by hand: the 8-byte length, `header` verbatim, then `data_bytes`
// bytes (0xAB).
std::string raw_file(const std::string& name, const std::string& header, size_t data_bytes,
                     int64_t declared_header_len = -1) {
  const auto path = scratch() + "/" + name;
  std::ofstream out(path, std::ios::binary);
  const uint64_t len =
      declared_header_len >= 0 ? static_cast<uint64_t>(declared_header_len) : header.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out << header;
  out << std::string(data_bytes, '\xAB');
  return path;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_CASE("safetensors reads every dtype of a file written by Python's safetensors") {
  st::File file(kFixtures + "/dtypes.safetensors");
  REQUIRE(file.metadata().at("format") == "pt");
  const auto expected = torch::arange(6).reshape({2, 3});
  REQUIRE(file.names().size() == 15);
  for (const auto& name : file.names()) {
    INFO(name);
    const auto& info = file.info(name);
    REQUIRE(info.dtype == name);
    REQUIRE(info.shape == std::vector<int64_t>{2, 3});
    const auto t = file.tensor(name);
    REQUIRE(t.scalar_type() == st::scalar_type(name));
    // Compare as int64; float8 and uint types go through float, which holds 0..5 exactly.
    const auto as_long =
        (name == "BOOL") ? t.to(torch::kLong) : t.to(torch::kFloat).to(torch::kLong);
    const auto want = name == "BOOL" ? expected.ne(0).to(torch::kLong) : expected;
    REQUIRE(torch::equal(as_long, want));
  }
}

TEST_CASE("safetensors round-trips tensors, aligns the data section and writes atomically") {
  const auto path = scratch() + "/roundtrip.safetensors";
  std::map<std::string, torch::Tensor> tensors{
      {"a.weight", torch::randn({3, 5})},
      {"b", torch::arange(7, torch::kInt)},
      {"c.bf16", torch::randn({2, 2}).to(torch::kBFloat16)},
      {"empty", torch::empty({0, 4})}};
  st::save_file(path, tensors, {{"format", "pt"}});
  const auto bytes = file_bytes(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  REQUIRE((8 + header_len) % 8 == 0);
  const auto loaded = st::load_file(path);
  REQUIRE(loaded.size() == tensors.size());
  for (const auto& [name, t] : tensors) {
    INFO(name);
    REQUIRE(loaded.at(name).sizes() == t.sizes());
    REQUIRE(torch::equal(loaded.at(name), t));
  }

  SECTION("an unfinished writer leaves nothing behind") {
    const auto p = scratch() + "/unfinished.safetensors";
    {
      st::Writer w(p);
      w.add("x", torch::ones({4}));
    }
    REQUIRE_FALSE(exists(p));
    REQUIRE(std::system(("ls -A " + scratch() + " | grep -q tmp").c_str()) != 0);
  }
  SECTION("a writer does not replace a file unless told to") {
    REQUIRE_THROWS_WITH(st::Writer(path), Contains("already exists"));
    REQUIRE(file_bytes(path) == bytes);
  }
  SECTION("byte ranges of another file are copied unchanged") {
    st::File source(path);
    const auto p = scratch() + "/copied.safetensors";
    st::Writer w(p);
    w.add_copy("a.weight", source);
    w.add_ranges("zeros", torch::kFloat, {2, 2}, {{-1, 0, 16}});
    w.finish();
    st::File copy(p);
    REQUIRE(std::memcmp(copy.bytes("a.weight"), source.bytes("a.weight"), 60) == 0);
    REQUIRE(torch::equal(copy.tensor("zeros"), torch::zeros({2, 2})));
  }
}

TEST_CASE("safetensors refuses bad files with the file, the tensor and the problem") {
  const std::string ok = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  REQUIRE_NOTHROW(st::File(raw_file("ok.safetensors", ok, 8)));

  SECTION("truncated before the header length") {
    const auto p = scratch() + "/tiny.safetensors";
    std::ofstream(p, std::ios::binary) << "abc";
    REQUIRE_THROWS_WITH(st::File(p), Contains("tiny.safetensors") && Contains("truncated"));
  }
  SECTION("header longer than the file") {
    REQUIRE_THROWS_WITH(st::File(raw_file("long.safetensors", ok, 8, 4096)),
                        Contains("long.safetensors") && Contains("runs past the end"));
  }
  SECTION("header above the 100 MB limit") {
    REQUIRE_THROWS_WITH(st::File(raw_file("huge.safetensors", ok, 8, 200'000'000)),
                        Contains("100 MB"));
  }
  SECTION("data truncated after the header") {
    REQUIRE_THROWS_WITH(st::File(raw_file("short.safetensors", ok, 4)),
                        Contains("tensor 't'") && Contains("run past"));
  }
  SECTION("malformed JSON") {
    REQUIRE_THROWS_WITH(st::File(raw_file("json.safetensors", "{\"t\": [", 0)),
                        Contains("json.safetensors") && Contains("not valid JSON"));
  }
  SECTION("unknown dtype") {
    const std::string h = R"({"t":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})";
    REQUIRE_THROWS_WITH(st::File(raw_file("dtype.safetensors", h, 8)),
                        Contains("tensor 't'") && Contains("unknown dtype 'F33'"));
  }
  SECTION("shape and size disagree") {
    const std::string h = R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})";
    REQUIRE_THROWS_WITH(st::File(raw_file("size.safetensors", h, 8)),
                        Contains("tensor 't'") && Contains("needs 3 x 4 bytes"));
  }
  SECTION("negative dimension") {
    const std::string h = R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})";
    REQUIRE_THROWS_WITH(st::File(raw_file("neg.safetensors", h, 8)),
                        Contains("non-negative integer"));
  }
  SECTION("overlapping tensors") {
    const std::string h = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
    REQUIRE_THROWS_WITH(st::File(raw_file("overlap.safetensors", h, 12)),
                        Contains("'b'") && Contains("overlap those of 'a'"));
  }
  SECTION("offsets out of range") {
    const std::string h = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
    REQUIRE_THROWS_WITH(st::File(raw_file("range.safetensors", h, 8)), Contains("run past"));
  }
  SECTION("bytes the header does not describe") {
    REQUIRE_THROWS_WITH(st::File(raw_file("trailing.safetensors", ok, 12)),
                        Contains("4 bytes after the last tensor"));
    const std::string h = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
    REQUIRE_THROWS_WITH(st::File(raw_file("hole.safetensors", h, 12)),
                        Contains("4 unused bytes before tensor 't'"));
  }
  SECTION("an end before the begin") {
    const std::string h = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})";
    REQUIRE_THROWS_WITH(st::File(raw_file("reversed.safetensors", h, 8)),
                        Contains("end before they begin"));
  }
}

TEST_CASE("a sharded checkpoint reads like the single file it was split from") {
  st::Checkpoint single(kFixtures + "/mixtral_ft");
  st::Checkpoint sharded(kFixtures + "/mixtral_ft_sharded");
  REQUIRE_FALSE(single.sharded());
  REQUIRE(sharded.sharded());
  REQUIRE(sharded.shard_files().size() == 3);
  REQUIRE(single.names() == sharded.names());
  for (const auto& name : single.names()) {
    INFO(name);
    REQUIRE(torch::equal(single.tensor(name), sharded.tensor(name)));
  }

  SECTION("an index naming a tensor its shard lacks is refused") {
    const auto dir = scratch() + "/bad_index";
    REQUIRE(std::system(("cp -r " + kFixtures + "/mixtral_ft_sharded " + dir).c_str()) == 0);
    std::ofstream(dir + "/model.safetensors.index.json")
        << R"({"metadata":{},"weight_map":{"ghost.weight":"model-00001-of-00003.safetensors"}})";
    REQUIRE_THROWS_WITH(st::Checkpoint(dir),
                        Contains("'ghost.weight'") && Contains("model-00001-of-00003.safetensors"));
    std::ofstream(dir + "/model.safetensors.index.json")
        << R"({"metadata":{},"weight_map":{"x":"missing.safetensors"}})";
    REQUIRE_THROWS_WITH(st::Checkpoint(dir),
                        Contains("missing.safetensors") && Contains("missing"));
  }

  SECTION("an index naming a file outside the folder is refused before it is opened") {
    const auto dir = scratch() + "/escaping_index";
    REQUIRE(std::system(("cp -r " + kFixtures + "/mixtral_ft_sharded " + dir).c_str()) == 0);
    // Each of these exists (the fixture's own shard, reached from outside), so only the path
    // check can refuse it.
    const std::string shard = "model-00001-of-00003.safetensors";
    for (const std::string& path : {"../escaping_index/" + shard, dir + "/" + shard, "./" + shard,
                                    std::string(".."), std::string(".")}) {
      INFO(path);
      std::ofstream(dir + "/model.safetensors.index.json")
          << R"({"weight_map":{"model.embed_tokens.weight":")" + path + R"("}})";
      REQUIRE_THROWS_WITH(st::Checkpoint(dir),
                          Contains("names '" + path + "', not a file in the checkpoint folder"));
    }
    // Found by fuzzing (test/fuzz/regressions/safetensors_index): a name longer than the file
    // system allows escaped as std::filesystem_error.
    const std::string long_name(300, 'x');
    std::ofstream(dir + "/model.safetensors.index.json")
        << R"({"weight_map":{"model.embed_tokens.weight":")" + long_name + R"("}})";
    REQUIRE_THROWS_WITH(st::Checkpoint(dir), Contains(long_name + ": shard named by the index is "
                                                                  "missing (File name too long)"));
  }
}
