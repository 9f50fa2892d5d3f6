#pragma once

// Byte copies between files for the safetensors writer and checkpoint folders (internal).

#include <moeprune/io/safetensors.h>

#include <cstdint>
#include <string>

namespace moeprune::safetensors::detail {

/// One output file written front to back: tensor bytes from memory, byte ranges of other files
/// (in the kernel, copy_file_range, where it can; otherwise through a bounded buffer; fd -1 appends
/// zeros). Every finished 64 MB window is handed to the kernel's writeback at once, and the one
/// before it is waited for and dropped from the page cache: a checkpoint larger than RAM then
/// streams at disk speed instead of piling up dirty pages that the final fsync (or the kernel's
/// throttling) must flush while reading stalls. Errors throw naming `path`.
class SequentialOutput {
 public:
  SequentialOutput(int fd, std::string path);
  void write(const void* data, uint64_t size);
  void copy(const ByteRange& range);
  /// fsync: everything written is on disk when this returns.
  void sync();

 private:
  void pace();

  int fd_;
  std::string path_;
  uint64_t written_ = 0;  // bytes appended so far
  uint64_t started_ = 0;  // writeback started for [0, started_)
  uint64_t dropped_ = 0;  // on disk and out of the page cache: [0, dropped_)
};

}  // namespace moeprune::safetensors::detail
