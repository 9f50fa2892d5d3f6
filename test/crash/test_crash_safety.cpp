// Crash safety of the writers (issue 20): a writer process (test/crash/crash_writer) saving a
// safetensors file, a Switch Transformers checkpoint folder or a ViT .pt checkpoint over an
// existing one is killed with SIGKILL at random points; the target must then hold the old
// version or the new one, complete, and a later save must succeed beside whatever the killed
// ones left. A save that hits the file-size limit (RLIMIT_FSIZE, as a full disk would) fails
// with a clear error, keeps the old version and leaves no temporary.
#include "../scratch_dir.h"
#include "crash_content.h"

#include <moeprune/io/safetensors.h>
#include <moeprune/models/seq2seq/checkpoint.h>
#include <moeprune/models/vision/checkpoint.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

// Starts the writer with its output in `log`; fork then exec at once, so the child never runs
// torch code from this process.
pid_t start_writer(const std::vector<std::string>& args, const std::string& log) {
  std::vector<char*> argv;
  // crash_writer is built next to this test binary.
  std::string program =
      std::filesystem::read_symlink("/proc/self/exe").parent_path() / "crash_writer";
  argv.push_back(program.data());
  std::vector<std::string> copies = args;
  for (auto& a : copies) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

int wait_for(pid_t pid) {
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return status;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::map<std::string, torch::Tensor> parameters_of(torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : m.named_parameters()) {
    out[p.key()] = p.value();
  }
  return out;
}

// Version `seed` of `kind`, as the tensors the target must hold.
std::map<std::string, torch::Tensor> expected(const std::string& kind, int64_t seed) {
  if (kind == "safetensors") {
    return crash::tensors(seed);
  }
  if (kind == "switch") {
    auto model = crash::switch_model(seed);
    return parameters_of(*model);
  }
  auto model = crash::vit_model(seed);
  return parameters_of(*model);
}

// What the target holds now, read the way a user reads it (throws if unreadable).
std::map<std::string, torch::Tensor> read_target(const std::string& kind,
                                                 const std::string& target) {
  if (kind == "safetensors") {
    return moeprune::safetensors::load_file(target);
  }
  if (kind == "switch") {
    auto model = moeprune::seq2seq::load_switch_transformer(target);
    return parameters_of(*model);
  }
  auto model = moeprune::load_vision_transformer(target);
  return parameters_of(*model);
}

bool same(const std::map<std::string, torch::Tensor>& a,
          const std::map<std::string, torch::Tensor>& b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (const auto& [name, t] : a) {
    const auto it = b.find(name);
    if (it == b.end() || !torch::equal(t, it->second)) {
      return false;
    }
  }
  return true;
}

struct Case {
  std::string kind, file;
};
const Case kCases[] = {
    {"safetensors", "model.safetensors"}, {"switch", "switch_model"}, {"vit", "vit.pt"}};

}  // namespace

TEST_CASE("a writer killed at random points leaves the old version or the new one, complete",
          "[crash]") {
  for (const auto& c : kCases) {
    SECTION(c.kind) {
      const auto dir = test::scratch_dir() + "/crash_" + c.kind;
      REQUIRE(::mkdir(dir.c_str(), 0755) == 0);
      const auto target = dir + "/" + c.file;
      const auto log = test::scratch_dir() + "/crash_" + c.kind + ".log";

      // Version 1, written to completion; its duration bounds the kill times.
      const auto start = Clock::now();
      int status = wait_for(start_writer({c.kind, target, "1"}, log));
      const double whole = std::chrono::duration<double>(Clock::now() - start).count();
      INFO(read_text(log));
      REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
      int64_t current = 1;
      REQUIRE(same(read_target(c.kind, target), expected(c.kind, current)));

      constexpr int kKills = 12;
      int kept_old = 0, got_new = 0, finished = 0;
      std::mt19937_64 rng(42);
      std::uniform_real_distribution<double> when(0.0, whole);
      for (int i = 0; i < kKills; ++i) {
        const int64_t next = 100 + i;
        const pid_t pid = start_writer({c.kind, target, std::to_string(next)}, log);
        std::this_thread::sleep_for(std::chrono::duration<double>(when(rng)));
        ::kill(pid, SIGKILL);
        status = wait_for(pid);
        if (WIFEXITED(status)) {
          REQUIRE(WEXITSTATUS(status) == 0);
          ++finished;
        }
        const auto held = read_target(c.kind, target);
        if (same(held, expected(c.kind, current))) {
          ++kept_old;
        } else {
          INFO("kill " << i << ": the target is neither version " << current << " nor " << next);
          REQUIRE(same(held, expected(c.kind, next)));
          ++got_new;
          current = next;
        }
      }
      const auto left = test::temporaries_in(dir);
      std::printf(
          "crash safety %s: %d kills (save of %.2f s): %d kept the old version, %d had "
          "the new one (%d writers finished first), %zu temporaries left by killed "
          "writers\n",
          c.kind.c_str(), kKills, whole, kept_old, got_new, finished, left.size());
      CHECK(kept_old + got_new == kKills);
      // A later save succeeds beside whatever the killed writers left.
      status = wait_for(start_writer({c.kind, target, "999"}, log));
      REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
      CHECK(same(read_target(c.kind, target), expected(c.kind, 999)));
    }
  }
}

// The largest file of `target` (a file, or a folder of files): where a kill at a byte offset lands.
int64_t largest_file(const std::string& target) {
  struct stat st {};
  REQUIRE(::stat(target.c_str(), &st) == 0);
  if (!S_ISDIR(st.st_mode)) {
    return static_cast<int64_t>(st.st_size);
  }
  int64_t largest = 0;
  for (const auto& entry : std::filesystem::directory_iterator(target)) {
    largest = std::max<int64_t>(largest, static_cast<int64_t>(entry.file_size()));
  }
  return largest;
}

TEST_CASE("a writer killed inside its write, at offsets across the file, keeps the old version",
          "[crash]") {
  // The random kills above may land before or after the write; these land inside it. The
  // writer's file-size limit is the offset and SIGXFSZ keeps its default action, so the kernel
  // kills the writer in the write that reaches that byte (crash_writer --die-at).
  for (const auto& c : kCases) {
    SECTION(c.kind) {
      const auto dir = test::scratch_dir() + "/die_at_" + c.kind;
      REQUIRE(::mkdir(dir.c_str(), 0755) == 0);
      const auto target = dir + "/" + c.file;
      const auto log = test::scratch_dir() + "/die_at_" + c.kind + ".log";
      int status = wait_for(start_writer({c.kind, target, "1"}, log));
      REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
      const int64_t size = largest_file(target);
      std::vector<int64_t> offsets = {1, 8, 4096};
      for (int i = 1; i <= 9; ++i) {
        offsets.push_back(size * i / 10);
      }
      offsets.push_back(size - 1);
      int mid_write = 0, kept_old = 0;
      for (size_t i = 0; i < offsets.size(); ++i) {
        INFO("kill at byte " << offsets[i] << " of " << size);
        status = wait_for(start_writer(
            {c.kind, target, std::to_string(200 + i), "--die-at", std::to_string(offsets[i])},
            log));
        INFO(read_text(log));
        const bool inside = WIFSIGNALED(status) && WTERMSIG(status) == SIGXFSZ;
        mid_write += inside ? 1 : 0;
        CHECK(inside);
        const bool kept = same(read_target(c.kind, target), expected(c.kind, 1));
        kept_old += kept ? 1 : 0;
        CHECK(kept);
      }
      std::printf(
          "crash safety %s: %d of %zu kills landed inside the write (bytes 1 to %lld of "
          "%lld); %d kept the old version; %zu temporaries left beside it\n",
          c.kind.c_str(), mid_write, offsets.size(), static_cast<long long>(size - 1),
          static_cast<long long>(size), kept_old, test::temporaries_in(dir).size());
      status = wait_for(start_writer({c.kind, target, "999"}, log));
      REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
      CHECK(same(read_target(c.kind, target), expected(c.kind, 999)));
    }
  }
}

TEST_CASE("a save over the file-size limit fails clearly, keeps the old version, leaves nothing",
          "[crash]") {
  for (const auto& c : kCases) {
    SECTION(c.kind) {
      const auto dir = test::scratch_dir() + "/fsize_" + c.kind;
      REQUIRE(::mkdir(dir.c_str(), 0755) == 0);
      const auto target = dir + "/" + c.file;
      const auto log = test::scratch_dir() + "/fsize_" + c.kind + ".log";
      int status = wait_for(start_writer({c.kind, target, "1"}, log));
      REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
      // 64 KiB: config.json fits, the tensors do not (EFBIG, what a full disk's ENOSPC does).
      status = wait_for(start_writer({c.kind, target, "2", "--fsize", "65536"}, log));
      const auto message = read_text(log);
      INFO(message);
      REQUIRE(WIFEXITED(status));
      CHECK(WEXITSTATUS(status) == 1);
      CHECK_THAT(message, Catch::Matchers::Contains("File too large"));
      CHECK(same(read_target(c.kind, target), expected(c.kind, 1)));
      CHECK(test::temporaries_in(dir).empty());
    }
  }
}
