#pragma once

// A scratch folder per test binary, removed at exit (with rm -rf: libtorch's exported
// std::filesystem symbols make remove_all on folders unreliable here), and file helpers.

#include <dirent.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

namespace test {

/// mkdtemp("/tmp/<prefix>-XXXXXX") on first use; the same folder afterwards.
inline std::string scratch_dir(const std::string& prefix = "moeprune-test") {
  static const std::string dir = [&] {
    std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
    const std::string d = ::mkdtemp(tmpl.data());
    static const std::string cmd = "rm -rf '" + d + "'";
    std::atexit([] { (void)std::system(cmd.c_str()); });
    return d;
  }();
  return dir;
}

inline bool path_exists(const std::string& path) {
  return ::access(path.c_str(), F_OK) == 0;
}

/// The entries of folder `dir` that the library's writers leave only while writing (or when
/// killed): temporaries beside a target (".<name>.tmp-<pid>-<n>") and old moeprune names.
inline std::vector<std::string> temporaries_in(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name.find(".tmp-") != std::string::npos || name.find(".moeprune-") != std::string::npos ||
          (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0)) {
        out.push_back(name);
      }
    }
    ::closedir(d);
  }
  return out;
}

}  // namespace test
