#include "child_process.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>

namespace bench {
namespace {

// VmHWM of a live process, in MB (0 once it is gone). wait4()'s ru_maxrss would also count the
// pages the forked child shared with this (large) parent before exec, so the child's own peak is
// polled from /proc instead; VmHWM only grows, so the last reading is the peak.
double vm_hwm_mb(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      return std::stod(line.substr(6)) / 1024.0;
    }
  }
  return 0;
}

}  // namespace

RunResult run(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) {
    args.push_back(const_cast<char*>(a.c_str()));
  }
  args.push_back(nullptr);
  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execvp(args[0], args.data());
    _exit(127);
  }
  RunResult r;
  int status = 0;
  const auto self = std::filesystem::read_symlink("/proc/self/exe");
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    // Until exec the child is a copy of this process; its readings are not the child's own.
    std::error_code ec;
    const auto exe = std::filesystem::read_symlink("/proc/" + std::to_string(pid) + "/exe", ec);
    if (!ec && exe != self) {
      r.peak_rss_mb = std::max(r.peak_rss_mb, vm_hwm_mb(pid));
    }
    ::usleep(20000);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.status = status;
  return r;
}

bool drop_caches() {
  ::sync();
  std::ofstream f("/proc/sys/vm/drop_caches");
  if (!f) {
    return false;
  }
  f << "3\n";
  f.flush();
  return static_cast<bool>(f);
}

}  // namespace bench
