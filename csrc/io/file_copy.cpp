#include "io/file_copy.h"

#include "io/posix_file.h"

#include <c10/util/Exception.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

namespace moeprune::safetensors {

using io::errno_text;

namespace detail {

namespace {

constexpr uint64_t kWritebackWindow = 64ULL << 20;

}  // namespace

SequentialOutput::SequentialOutput(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}

void SequentialOutput::write(const void* data, uint64_t size) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd_, p, std::min(size, kWritebackWindow));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      TORCH_CHECK(false, path_ + ": write failed: " + errno_text());
    }
    p += n;
    size -= static_cast<uint64_t>(n);
    written_ += static_cast<uint64_t>(n);
    pace();
  }
}

void SequentialOutput::copy(const ByteRange& range) {
  if (range.fd < 0) {
    static const std::vector<uint8_t> zeros(1 << 20);
    for (uint64_t left = range.length; left > 0;) {
      const uint64_t n = std::min<uint64_t>(left, zeros.size());
      write(zeros.data(), n);
      left -= n;
    }
    return;
  }
  auto in_offset = static_cast<loff_t>(range.offset);
  uint64_t left = range.length;
  while (left > 0) {
    const ssize_t n =
        ::copy_file_range(range.fd, &in_offset, fd_, nullptr, std::min(left, kWritebackWindow), 0);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) {
      break;
    }
    if (n < 0) {
      TORCH_CHECK(false, path_ + ": copying tensor bytes failed: " + errno_text());
    }
    TORCH_CHECK(n > 0, path_, ": source file ended ", left, " bytes early");
    left -= static_cast<uint64_t>(n);
    written_ += static_cast<uint64_t>(n);
    pace();
  }
  std::vector<uint8_t> buffer(left > 0 ? (8u << 20) : 0);
  while (left > 0) {
    const ssize_t n =
        ::pread(range.fd, buffer.data(), std::min<uint64_t>(left, buffer.size()), in_offset);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      TORCH_CHECK(false, path_ + ": reading tensor bytes failed: " +
                             (n < 0 ? errno_text() : "end of file"));
    }
    write(buffer.data(), static_cast<uint64_t>(n));
    in_offset += n;
    left -= static_cast<uint64_t>(n);
  }
}

// sync_file_range and posix_fadvise are hints: where a file system does not take them, the
// final fsync still makes the file durable.
void SequentialOutput::pace() {
  while (written_ - started_ >= kWritebackWindow) {
    ::sync_file_range(fd_, static_cast<off64_t>(started_), kWritebackWindow, SYNC_FILE_RANGE_WRITE);
    started_ += kWritebackWindow;
    if (started_ - dropped_ > kWritebackWindow) {
      ::sync_file_range(
          fd_, static_cast<off64_t>(dropped_), kWritebackWindow,
          SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
      ::posix_fadvise(fd_, static_cast<off_t>(dropped_), kWritebackWindow, POSIX_FADV_DONTNEED);
      dropped_ += kWritebackWindow;
    }
  }
}

void SequentialOutput::sync() {
  if (::fsync(fd_) != 0) {
    TORCH_CHECK(false, path_ + ": fsync failed: " + errno_text());
  }
}

}  // namespace detail

}  // namespace moeprune::safetensors
