// The process the crash-safety test kills: saves version SEED of one kind of file to TARGET
// (replacing what is there) and exits 0; with --fsize N the process may write files of at most N
// bytes (RLIMIT_FSIZE, SIGXFSZ ignored, so writes fail with EFBIG as on a full disk) and exits 1
// with the library's error on stderr. With --die-at N the limit is the same but SIGXFSZ keeps its
// default action: the process is killed by the kernel inside the write that reaches byte N of a
// file, a crash at a chosen offset (no handler, no cleanup, no core file).
//   crash_writer safetensors|switch|vit TARGET SEED [--fsize N | --die-at N]
#include "crash_content.h"

#include <moeprune/io/safetensors.h>
#include <moeprune/models/seq2seq/checkpoint.h>
#include <moeprune/models/vision/checkpoint.h>

#include <sys/resource.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>

int main(int argc, char** argv) {
  if (argc != 4 && argc != 6) {
    std::fprintf(stderr,
                 "usage: crash_writer safetensors|switch|vit TARGET SEED [--fsize N | --die-at "
                 "N]\n");
    return 2;
  }
  const std::string kind = argv[1], target = argv[2];
  const int64_t seed = std::stoll(argv[3]);
  try {
    // Build first, then limit: only the save itself runs under the limit.
    std::map<std::string, torch::Tensor> tensors;
    moeprune::seq2seq::SwitchTransformer switch_model{nullptr};
    moeprune::VisionTransformer vit{nullptr};
    if (kind == "safetensors") {
      tensors = crash::tensors(seed);
    } else if (kind == "switch") {
      switch_model = crash::switch_model(seed);
    } else if (kind == "vit") {
      vit = crash::vit_model(seed);
    } else {
      std::fprintf(stderr, "crash_writer: unknown kind %s\n", kind.c_str());
      return 2;
    }
    const bool fail = argc == 6 && std::strcmp(argv[4], "--fsize") == 0;
    const bool die = argc == 6 && std::strcmp(argv[4], "--die-at") == 0;
    if (argc == 6 && !fail && !die) {
      std::fprintf(stderr, "crash_writer: unknown option %s\n", argv[4]);
      return 2;
    }
    if (die) {
      std::signal(SIGXFSZ, SIG_DFL);
      const rlimit no_core{0, 0};
      ::setrlimit(RLIMIT_CORE, &no_core);
    }
    if (fail || die) {
      if (fail) std::signal(SIGXFSZ, SIG_IGN);
      const rlimit limit{static_cast<rlim_t>(std::stoll(argv[5])),
                         static_cast<rlim_t>(std::stoll(argv[5]))};
      if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) {
        std::perror("setrlimit");
        return 2;
      }
    }
    std::printf("saving\n");
    std::fflush(stdout);
    if (kind == "safetensors") {
      moeprune::safetensors::save_file(target, tensors);
    } else if (kind == "switch") {
      moeprune::seq2seq::save_switch_transformer(switch_model, target,
                                                 moeprune::seq2seq::SaveOptions().overwrite(true));
    } else {
      moeprune::save_vision_transformer(target, vit);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "crash_writer: %s\n", e.what());
    return 1;
  }
  return 0;
}
