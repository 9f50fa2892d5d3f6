#pragma once

// The readers under test take paths, so each input is written to a file in a scratch folder
// (one per process, on /dev/shm when it exists, removed at exit).
#include <cstddef>
#include <cstdint>
#include <string>

namespace moeprune_fuzz {

/// The process's scratch folder.
const std::string& scratch_dir();

/// Writes `size` bytes to `path` (replacing it); aborts on an I/O error (not a finding).
void write_bytes(const std::string& path, const uint8_t* data, size_t size);

/// Symbolic link `link` -> `target` (absolute), replacing `link`.
void link_file(const std::string& target, const std::string& link);

/// The committed test fixtures (test/fixtures), from MOEPRUNE_TEST_FIXTURES at build time.
std::string fixtures_dir();

}  // namespace moeprune_fuzz
