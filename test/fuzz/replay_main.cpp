// fuzz_replay: runs a fuzz target (test/fuzz/*_fuzz.cpp) without libFuzzer, so the normal build
// checks every seed and regression input, plus a fixed number of seeded random mutations of them
// (a smoke test of seconds; scripts/fuzz does the real fuzzing).
//
//   fuzz_replay TARGET [--mutations N] [--seed S] [--verbose] FILE_OR_FOLDER...
//
// An input the target neither accepts nor refuses with a c10::Error fails the run: the input is
// written to fuzz-failure-TARGET.bin in the working folder and its origin printed.
#include "fuzz_target.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

namespace {

struct Input {
  std::string origin;
  std::vector<uint8_t> bytes;
};

std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void collect(const std::string& path, std::vector<Input>& out) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    std::cerr << "fuzz_replay: " << path << ": no such file or folder\n";
    std::exit(2);
  }
  if (!S_ISDIR(st.st_mode)) {
    out.push_back({path, read_all(path)});
    return;
  }
  std::vector<std::string> names;
  if (DIR* d = ::opendir(path.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != ".." && name != "README.md") {
        names.push_back(name);
      }
    }
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  for (const auto& name : names) {
    collect(path + "/" + name, out);
  }
}

// libFuzzer-like mutations: byte flips, random bytes, insertions, deletions, duplicated chunks
// and ASCII digits (the parsers read JSON, where numbers matter).
std::vector<uint8_t> mutate(std::vector<uint8_t> b, std::mt19937_64& rng) {
  const int steps = 1 + static_cast<int>(rng() % 4);
  for (int s = 0; s < steps; ++s) {
    const size_t n = b.size();
    const size_t at = n == 0 ? 0 : rng() % n;
    switch (rng() % 6) {
      case 0:
        if (n != 0) b[at] ^= static_cast<uint8_t>(1u << (rng() % 8));
        break;
      case 1:
        if (n != 0) b[at] = static_cast<uint8_t>(rng());
        break;
      case 2:
        b.insert(b.begin() + static_cast<long>(at), static_cast<uint8_t>(rng()));
        break;
      case 3:
        if (n != 0)
          b.erase(b.begin() + static_cast<long>(at),
                  b.begin() + static_cast<long>(std::min(n, at + 1 + rng() % 8)));
        break;
      case 4:
        if (n != 0) {
          const size_t len = std::min<size_t>(n - at, 1 + rng() % 16);
          const std::vector<uint8_t> chunk(b.begin() + static_cast<long>(at),
                                           b.begin() + static_cast<long>(at + len));
          b.insert(b.begin() + static_cast<long>(rng() % (n + 1)), chunk.begin(), chunk.end());
        }
        break;
      default:
        if (n != 0) b[at] = static_cast<uint8_t>('0' + rng() % 10);
        break;
    }
  }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: fuzz_replay TARGET [--mutations N] [--seed S] [--verbose] "
                 "FILE_OR_FOLDER...\n";
    return 2;
  }
  const std::string name = argv[1];
  const auto it = moeprune_fuzz::targets().find(name);
  if (it == moeprune_fuzz::targets().end()) {
    std::cerr << "fuzz_replay: no target '" << name << "' (known:";
    for (const auto& [known, unused] : moeprune_fuzz::targets()) {
      (void)unused;
      std::cerr << " " << known;
    }
    std::cerr << ")\n";
    return 2;
  }
  long mutations = 0;
  uint64_t seed = 1;
  bool verbose = false;
  std::vector<Input> inputs;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--mutations" && i + 1 < argc) {
      mutations = std::stol(argv[++i]);
    } else if (arg == "--seed" && i + 1 < argc) {
      seed = std::stoull(argv[++i]);
    } else if (arg == "--verbose") {
      verbose = true;
    } else {
      collect(arg, inputs);
    }
  }
  if (inputs.empty()) {
    std::cerr << "fuzz_replay: no inputs\n";
    return 2;
  }
  const auto run = [&](const std::string& origin, const std::vector<uint8_t>& bytes) {
    if (verbose) {
      std::cerr << "running " << origin << " (" << bytes.size() << " bytes)\n";
    }
    try {
      it->second(bytes.data(), bytes.size());
    } catch (const std::exception& e) {
      const std::string out = "fuzz-failure-" + name + ".bin";
      std::ofstream(out, std::ios::binary)
          .write(reinterpret_cast<const char*>(bytes.data()), static_cast<long>(bytes.size()));
      std::cerr << "fuzz_replay: " << name << ": " << origin
                << " escaped as an exception other than c10::Error: " << e.what()
                << "\n(the input is in " << out << ")\n";
      std::exit(1);
    }
  };
  for (const auto& input : inputs) {
    run(input.origin, input.bytes);
  }
  std::mt19937_64 rng(seed);
  for (long m = 0; m < mutations; ++m) {
    const auto& base = inputs[rng() % inputs.size()];
    run("mutation " + std::to_string(m) + " (seed " + std::to_string(seed) + ") of " + base.origin,
        mutate(base.bytes, rng));
  }
  std::cout << name << ": " << inputs.size() << " inputs and " << mutations
            << " mutations, each accepted or refused with a c10::Error ("
            << moeprune_fuzz::refusals() << " refusals)\n";
  return 0;
}
