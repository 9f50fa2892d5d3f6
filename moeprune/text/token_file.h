#pragma once

// Token id files: whitespace-separated non-negative integers, what `moeprune tokenize --out`
// writes and what `--calibration FILE.ids` and `moeprune eval` read.
#include <cstdint>
#include <string>
#include <vector>

namespace moeprune::text {

/// The ids in `path`; refuses a word that is not a non-negative integer, naming the file, its
/// position and the word.
std::vector<int64_t> read_token_ids(const std::string& path);

}  // namespace moeprune::text
