#include "io/posix_file.h"

#include "io/file_copy.h"

#include <c10/util/Exception.h>

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

namespace moeprune::io {

std::string errno_text() {
  return std::strerror(errno);
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

UniqueFd::UniqueFd(UniqueFd&& other) noexcept : fd_(other.fd_), path_(std::move(other.path_)) {
  other.fd_ = -1;
}

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) {
      ::close(fd_);
    }
    fd_ = other.fd_;
    path_ = std::move(other.path_);
    other.fd_ = -1;
  }
  return *this;
}

void UniqueFd::close() {
  if (fd_ < 0) {
    return;
  }
  const int fd = fd_;
  fd_ = -1;
  TORCH_CHECK(::close(fd) == 0, path_, ": close failed: ", errno_text());
}

UniqueFd open_file(const std::string& path, int flags, mode_t mode) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  TORCH_CHECK(fd >= 0, path, ": cannot ", (flags & O_CREAT) ? "create" : "open", ": ",
              errno_text());
  return UniqueFd(fd, path);
}

std::string temporary_name_beside(const std::string& target) {
  const std::filesystem::path t(target);
  std::random_device rd;
  return (t.parent_path() / ("." + t.filename().string() + ".tmp-" + std::to_string(::getpid()) +
                             "-" + std::to_string(rd())))
      .string();
}

AtomicFile::AtomicFile(std::string target, bool overwrite)
    : target_(std::move(target)), overwrite_(overwrite) {
  TORCH_CHECK(!target_.empty(), "AtomicFile: empty path");
  TORCH_CHECK(overwrite_ || !std::filesystem::exists(target_), target_,
              ": already exists (not overwriting)");
  tmp_ = temporary_name_beside(target_);
  const int fd = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    const auto reason = errno_text();
    tmp_.clear();
    TORCH_CHECK(false, target_, ": cannot create a temporary file next to it: ", reason);
  }
  fd_ = UniqueFd(fd, target_);
}

AtomicFile::~AtomicFile() {
  if (!committed_ && !tmp_.empty()) {
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::commit() {
  TORCH_CHECK(!committed_, target_, ": committed twice");
  fd_.close();
  TORCH_CHECK(overwrite_ || !std::filesystem::exists(target_), target_,
              ": already exists (not overwriting)");
  TORCH_CHECK(::rename(tmp_.c_str(), target_.c_str()) == 0, target_,
              ": cannot rename the temporary file into place: ", errno_text());
  committed_ = true;
}

AtomicFolder::AtomicFolder(std::string target) : target_(std::move(target)) {
  TORCH_CHECK(!std::filesystem::exists(target_), target_,
              ": already exists; choose a new output folder (nothing was written)");
  const std::filesystem::path t(target_);
  const auto parent = t.parent_path().empty() ? std::filesystem::path(".") : t.parent_path();
  TORCH_CHECK(std::filesystem::is_directory(parent), target_, ": the parent folder does not exist");
  tmp_ = temporary_name_beside(target_);
  if (::mkdir(tmp_.c_str(), 0755) != 0) {
    const auto reason = errno_text();
    const auto tmp = tmp_;
    tmp_.clear();
    TORCH_CHECK(false, tmp, ": cannot create: ", reason);
  }
}

AtomicFolder::~AtomicFolder() {
  if (!committed_ && !tmp_.empty()) {
    remove_flat_folder(tmp_);
  }
}

void AtomicFolder::commit() {
  TORCH_CHECK(!committed_, target_, ": committed twice");
  TORCH_CHECK(!std::filesystem::exists(target_), target_,
              ": appeared while writing; not replacing it");
  TORCH_CHECK(::rename(tmp_.c_str(), target_.c_str()) == 0, target_, ": cannot rename ", tmp_,
              " into place: ", errno_text());
  committed_ = true;
}

void swap_in_folder(const std::string& staging, const std::string& target) {
  // One atomic exchange (Linux renameat2 RENAME_EXCHANGE): at every instant `target` is the old
  // folder or the new one; the old one then sits at `staging` and is removed.
  if (::renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) == 0) {
    remove_flat_folder(staging);
    return;
  }
  TORCH_CHECK(errno == EINVAL || errno == ENOSYS, staging, ": cannot exchange with ", target, ": ",
              errno_text());
  // A file system without the exchange: move the old folder aside, then the new one in.
  const auto old = temporary_name_beside(target);
  TORCH_CHECK(::rename(target.c_str(), old.c_str()) == 0, target,
              ": cannot move aside: ", errno_text());
  TORCH_CHECK(::rename(staging.c_str(), target.c_str()) == 0, staging, ": cannot rename to ",
              target, ": ", errno_text());
  remove_flat_folder(old);
}

FolderReplacement::FolderReplacement(const std::string& target, bool overwrite)
    : target_(std::filesystem::path(target).lexically_normal().string()) {
  replacing_ = std::filesystem::exists(target_);
  TORCH_CHECK(!replacing_ || overwrite, target,
              ": already exists (pass overwrite to replace it; nothing was written)");
  staging_ = replacing_ ? temporary_name_beside(target_) : target_;
  folder_.emplace(staging_);
}

void FolderReplacement::commit() {
  folder_->commit();
  if (replacing_) {
    // The old folder is removed only once the new one is in place.
    swap_in_folder(staging_, target_);
  }
}

void write_text_file(const std::string& path, const std::string& text) {
  auto fd = open_file(path, O_WRONLY | O_CREAT | O_EXCL);
  safetensors::detail::SequentialOutput out(fd.get(), path);
  out.write(text.data(), text.size());
  out.sync();
  fd.close();
}

void copy_file(const std::string& from, const std::string& to) {
  auto in = open_file(from, O_RDONLY);
  struct stat st {};
  TORCH_CHECK(::fstat(in.get(), &st) == 0, from, ": cannot stat: ", errno_text());
  auto out = open_file(to, O_WRONLY | O_CREAT | O_EXCL);
  // In the kernel, so the bytes never pass through this process; synced before the folder
  // holding it is renamed into place.
  safetensors::detail::SequentialOutput output(out.get(), to);
  output.copy({in.get(), 0, static_cast<uint64_t>(st.st_size)});
  output.sync();
  out.close();
}

std::vector<std::string> list_folder(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  TORCH_CHECK(d != nullptr, dir, ": cannot list: ", errno_text());
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") {
      names.push_back(name);
    }
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

void remove_flat_folder(const std::string& dir) {
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") {
        ::unlink((dir + "/" + name).c_str());
      }
    }
    ::closedir(d);
  }
  ::rmdir(dir.c_str());
}

}  // namespace moeprune::io
