#pragma once

// Byte copies between files for the safetensors writer and checkpoint folders (internal).

#include <moeprune/safetensors.h>

#include <cstdint>
#include <string>

namespace moeprune::safetensors::detail {

/// Writes all of `size` bytes to `fd` or throws naming `path`.
void write_all(int fd, const void* data, uint64_t size, const std::string& path);

/// Appends `range` to `out_fd`: in the kernel (copy_file_range) where it can, otherwise through a
/// bounded buffer; fd -1 appends zeros. Throws naming `path`.
void copy_range(const ByteRange& range, int out_fd, const std::string& path);

}  // namespace moeprune::safetensors::detail
