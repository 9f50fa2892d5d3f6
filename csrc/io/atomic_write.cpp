#include <moeprune/io/atomic_write.h>

#include "io/file_copy.h"
#include "io/posix_file.h"

#include <c10/util/Exception.h>

#include <filesystem>
#include <system_error>

namespace moeprune::io {

void write_file_atomically(const std::string& path, const std::string& contents) {
  TORCH_CHECK(!path.empty(), "write_file_atomically: the path is empty");
  const std::filesystem::path target(path);
  if (target.has_parent_path()) {
    std::error_code error;
    std::filesystem::create_directories(target.parent_path(), error);
    TORCH_CHECK(!error, path, ": cannot create its folder ", target.parent_path().string(), ": ",
                error.message());
  }
  TORCH_CHECK(!std::filesystem::is_directory(target), path,
              ": is a folder; cannot write a file there");
  AtomicFile file(path, /*overwrite=*/true);
  safetensors::detail::SequentialOutput out(file.fd(), path);
  out.write(contents.data(), contents.size());
  out.sync();
  file.commit();
}

}  // namespace moeprune::io
