// io::Fingerprint is 64-bit FNV-1a: the published test vectors (the FNV authors' test suite:
// "" -> cbf29ce484222325, "a" -> af63dc4c8601ec8c, "foobar" -> 85944171f73967e8), a file hashed
// in 64 KiB pieces equal to its bytes at once, and text separated by its terminating zero.
#include "scratch_dir.h"

#include <moeprune/io/atomic_write.h>
#include <moeprune/io/fingerprint.h>

#include <catch2/catch.hpp>

#include <string>

using moeprune::io::Fingerprint;

TEST_CASE("Fingerprint is FNV-1a 64 (the published vectors)") {
  CHECK(Fingerprint().hex() == "cbf29ce484222325");
  CHECK(Fingerprint().add("a", 1).value() == 0xaf63dc4c8601ec8cull);
  CHECK(Fingerprint().add("foobar", 6).hex() == "85944171f73967e8");
  // Incremental: the same bytes in pieces give the same value.
  CHECK(Fingerprint().add("foo", 3).add("bar", 3).hex() == "85944171f73967e8");
}

TEST_CASE("Fingerprint of text and files") {
  // add_text mixes in the terminating zero: "foobar\0" is not "foobar".
  CHECK(Fingerprint().add_text("foobar").value() == Fingerprint().add("foobar", 7).value());
  CHECK(Fingerprint().add_text("ab").add_text("c").value() !=
        Fingerprint().add_text("a").add_text("bc").value());
  // A file longer than the 64 KiB read buffer, hashed as its bytes are.
  std::string bytes(200000, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 131 + 7) % 251);
  const auto path = test::scratch_dir() + "/fingerprint/file.bin";
  moeprune::io::write_file_atomically(path, bytes);
  CHECK(Fingerprint().add_file(path).value() ==
        Fingerprint().add(bytes.data(), bytes.size()).value());
  CHECK_THROWS_WITH(Fingerprint().add_file(path + ".missing"),
                    Catch::Contains("file.bin.missing' to fingerprint it"));
}
