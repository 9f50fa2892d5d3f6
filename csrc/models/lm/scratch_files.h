#pragma once

// Per-MoE-layer scratch files of the streamed compressions (merged or sparsified experts waiting
// for the checkpoint writer), removed however the run ends.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace moeprune::lm::detail {

class ScratchFiles {
 public:
  /// Files "<dir>/moeprune-<what>-<pid>-<index>.safetensors".
  ScratchFiles(std::string dir, std::string what) : dir_(std::move(dir)), what_(std::move(what)) {}
  ~ScratchFiles() {
    for (const auto& p : paths_) {
      std::remove(p.c_str());
    }
  }
  ScratchFiles(const ScratchFiles&) = delete;
  ScratchFiles& operator=(const ScratchFiles&) = delete;
  std::string next(int64_t index) {
    paths_.push_back(dir_ + "/moeprune-" + what_ + "-" + std::to_string(::getpid()) + "-" +
                     std::to_string(index) + ".safetensors");
    std::remove(paths_.back().c_str());  // a leftover of a killed run with the same pid
    return paths_.back();
  }

 private:
  std::string dir_, what_;
  std::vector<std::string> paths_;
};

}  // namespace moeprune::lm::detail
