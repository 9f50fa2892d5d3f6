#pragma once

// A scratch folder per test binary, removed at exit (with rm -rf: libtorch's exported
// std::filesystem symbols make remove_all on folders unreliable here), and file helpers.

#include <unistd.h>

#include <cstdlib>
#include <string>

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

}  // namespace test
