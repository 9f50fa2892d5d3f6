#include "machine_info.h"

#include <moeprune/io/atomic_write.h>

#include <ATen/Parallel.h>
#include <torch/version.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

namespace bench {
namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      return line.substr(line.find(':') + 2);
    }
  }
  return "unknown";
}

std::string memory_total() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  std::getline(in, line);  // MemTotal:  ... kB
  return line.substr(line.find(':') + 1)
      .erase(0, line.substr(line.find(':') + 1).find_first_not_of(' '));
}

}  // namespace

nlohmann::json machine_info() {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char date[32];
  std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return {{"host", host},
          {"cpu", cpu_model()},
          {"logical_cores", std::thread::hardware_concurrency()},
          {"torch_threads", at::get_num_threads()},
          {"memory", memory_total()},
          {"torch", TORCH_VERSION},
          {"compiler", __VERSION__},
          {"date_utc", date}};
}

void write_results(const std::filesystem::path& path, const nlohmann::json& results) {
  moeprune::io::write_file_atomically(path.string(), results.dump(2) + "\n");
}

}  // namespace bench
