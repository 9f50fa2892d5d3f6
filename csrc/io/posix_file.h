#pragma once

// POSIX files for the writers (internal): a descriptor closed by its owner, and the two ways
// moeprune writes so that a failure or a kill never leaves a partial target: a temporary file
// beside the target renamed over it (AtomicFile), and a temporary folder renamed into place
// (AtomicFolder). Every error is a c10::Error naming the path and errno's text.
#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moeprune::io {

/// errno as text.
std::string errno_text();

/// An open file descriptor, closed (unchecked) when it goes out of scope; close() checks.
class UniqueFd {
 public:
  UniqueFd() = default;
  UniqueFd(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~UniqueFd();
  UniqueFd(UniqueFd&& other) noexcept;
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  const std::string& path() const { return path_; }
  /// Closes now; throws naming the path when the kernel reports an error (a late write error).
  void close();

 private:
  int fd_ = -1;
  std::string path_;
};

/// open(2) that throws naming `path` and `what` ("open", "create").
UniqueFd open_file(const std::string& path, int flags, mode_t mode = 0644);

/// A name for a temporary beside `target`: "<dir>/.<name>.tmp-<pid>-<random>".
std::string temporary_name_beside(const std::string& target);

/// A file written under a temporary name beside `target` and renamed over it by commit(); if
/// commit() is never reached (an error, an exception) the temporary is removed.
class AtomicFile {
 public:
  /// Refuses an existing `target` unless `overwrite`.
  AtomicFile(std::string target, bool overwrite);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  int fd() const { return fd_.get(); }
  const std::string& temporary_path() const { return tmp_; }
  /// fsync is the caller's (it knows when the data is complete); closes, checks `target` did
  /// not appear meanwhile (when not overwriting) and renames into place.
  void commit();

 private:
  std::string target_, tmp_;
  bool overwrite_;
  UniqueFd fd_;
  bool committed_ = false;
};

/// A folder built under a temporary name beside `target` (which must not exist) and renamed into
/// place by commit(); otherwise it and the files in it are removed.
class AtomicFolder {
 public:
  explicit AtomicFolder(std::string target);
  ~AtomicFolder();
  AtomicFolder(const AtomicFolder&) = delete;
  AtomicFolder& operator=(const AtomicFolder&) = delete;

  /// The temporary folder's path; write the files here.
  const std::string& path() const { return tmp_; }
  /// Renames into place; refuses if `target` appeared meanwhile.
  void commit();

 private:
  std::string target_, tmp_;
  bool committed_ = false;
};

/// Replaces the existing folder `target` by the complete folder `staging` (a temporary beside it)
/// in one atomic exchange, then removes the old folder of plain files; `target` always holds one
/// complete version, also if the process dies between the steps.
void swap_in_folder(const std::string& staging, const std::string& target);

/// A model folder written beside `target` and put in its place by commit(): renamed into place
/// when `target` does not exist, swapped in (swap_in_folder) when it does and `overwrite` is set;
/// an existing `target` is refused otherwise, naming it. The staging name is unique, so a save
/// killed earlier leaves nothing a later one trips over; without commit() nothing is left.
class FolderReplacement {
 public:
  FolderReplacement(const std::string& target, bool overwrite);
  FolderReplacement(const FolderReplacement&) = delete;
  FolderReplacement& operator=(const FolderReplacement&) = delete;

  /// Where to write the files.
  const std::string& path() const { return folder_->path(); }
  void commit();

 private:
  std::string target_, staging_;
  bool replacing_ = false;
  std::optional<AtomicFolder> folder_;
};

/// Writes `text` to the new file `path` and syncs it.
void write_text_file(const std::string& path, const std::string& text);
/// Copies `from` to the new file `to` (in the kernel where it can) and syncs it.
void copy_file(const std::string& from, const std::string& to);
/// Whether anything (file, folder, link target) is at `path`.
bool exists(const std::string& path);
/// The names in folder `dir` (no "." or ".."), sorted.
std::vector<std::string> list_folder(const std::string& dir);
/// Removes a folder of plain files (our temporary output). Not std::filesystem::remove_all:
/// libtorch exports its own std::filesystem symbols, and the two disagree about iteration.
void remove_flat_folder(const std::string& dir);

}  // namespace moeprune::io
