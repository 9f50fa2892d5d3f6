#include "fuzz_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace moeprune_fuzz {
namespace {

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "fuzz harness: %s: %s\n", what.c_str(), std::strerror(errno));
  std::abort();
}

}  // namespace

const std::string& scratch_dir() {
  static const std::string dir = [] {
    struct stat st {};
    const std::string base =
        ::stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
    std::string tmpl = base + "/moeprune-fuzz-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      die("mkdtemp " + tmpl);
    }
    // rm -rf rather than std::filesystem::remove_all (see test/scratch_dir.h).
    static const std::string cmd = "rm -rf '" + tmpl + "'";
    std::atexit([] { (void)std::system(cmd.c_str()); });
    return tmpl;
  }();
  return dir;
}

void write_bytes(const std::string& path, const uint8_t* data, size_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    die("open " + path);
  }
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      die("write " + path);
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
}

void link_file(const std::string& target, const std::string& link) {
  ::unlink(link.c_str());
  if (::symlink(target.c_str(), link.c_str()) != 0) {
    die("symlink " + link);
  }
}

std::string fixtures_dir() {
  return MOEPRUNE_TEST_FIXTURES;
}

}  // namespace moeprune_fuzz
