#include "cli_common.h"

#include "commands.h"

#include <moeprune/io/fingerprint.h>
#include <moeprune/text/token_file.h>

#include <c10/util/Exception.h>
#include <dirent.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <vector>

namespace cli {

namespace {

// `path` with symbolic links and `..` resolved, even where its last parts do not exist yet: the
// deepest existing ancestor goes through realpath(3), the rest is appended. POSIX rather than
// std::filesystem, which libtorch.so also exports (csrc/io/posix_file.h).
std::string resolved(const std::string& path) {
  std::string head = path.empty() ? "." : path, tail;
  while (true) {
    char buffer[PATH_MAX];
    if (::realpath(head.c_str(), buffer) != nullptr) {
      return tail.empty() ? std::string(buffer) : std::string(buffer) + "/" + tail;
    }
    const auto slash = head.find_last_of('/');
    const std::string name = slash == std::string::npos ? head : head.substr(slash + 1);
    if (name != "." && !name.empty()) {
      tail = tail.empty() ? name : name + "/" + tail;
    }
    const std::string parent = slash == std::string::npos ? "."
                               : slash == 0               ? "/"
                                                          : head.substr(0, slash);
    if (parent == head) return path;  // not even "." or "/" resolves
    head = parent;
  }
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

std::string run_fingerprint(const std::vector<std::string>& parts, const torch::Tensor& tokens,
                            const std::vector<std::string>& checkpoints) {
  moeprune::io::Fingerprint f;
  for (const auto& p : parts) f.add_text(p);
  const auto ids = tokens.to(torch::kLong).contiguous();
  f.add(ids.data_ptr(), static_cast<size_t>(ids.numel()) * sizeof(int64_t));
  for (const auto& s : ids.sizes()) f.add(&s, sizeof(s));
  for (const auto& dir : checkpoints) {
    if (dir.empty()) continue;
    f.add_text(resolved(dir));
    std::vector<std::string> names;
    if (DIR* d = ::opendir(dir.c_str())) {
      while (const dirent* e = ::readdir(d)) names.emplace_back(e->d_name);
      ::closedir(d);
    }
    std::sort(names.begin(), names.end());
    for (const auto& name : names) {
      struct stat st {};
      if (name == "." || name == ".." || ::stat((dir + "/" + name).c_str(), &st) != 0) continue;
      f.add_text(name);
      const int64_t size = st.st_size, mtime = st.st_mtim.tv_sec, nsec = st.st_mtim.tv_nsec;
      f.add(&size, sizeof(size));
      f.add(&mtime, sizeof(mtime));
      f.add(&nsec, sizeof(nsec));
    }
  }
  return f.hex();
}

void check_result_path(const std::string& option, const std::string& path,
                       const std::vector<std::string>& inputs) {
  if (path.empty()) return;
  TORCH_CHECK(!is_directory(path), option, " ", path,
              ": is a folder; give a file name (nothing was written)");
  const auto out = resolved(path);
  for (const auto& input : inputs) {
    if (input.empty()) continue;
    const auto in = resolved(input);
    TORCH_CHECK(out != in, option, " ", path, ": is the input ", input,
                "; write the result elsewhere (nothing was written)");
    TORCH_CHECK(!is_directory(in) || out.compare(0, in.size() + 1, in + "/") != 0, option, " ",
                path, ": is inside the input folder ", input,
                "; write the result elsewhere (nothing was written)");
  }
}

void check_new_folder(const std::string& option, const std::string& path) {
  struct stat st {};
  TORCH_CHECK(path.empty() || ::lstat(path.c_str(), &st) != 0, option, " ", path,
              ": already exists; choose a new output folder (nothing was written)");
}

std::function<void(int64_t, int64_t)> LazyBar::callback() {
  return [this](int64_t done, int64_t total) {
    if (!bar_) bar_ = std::make_unique<moeprune::ProgressBar>(total, label_, unit_);
    bar_->update(done);
  };
}

void LazyBar::finish() {
  if (bar_) bar_->finish();
  bar_.reset();
}

double peak_rss_mb() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return 0.0;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

torch::Dtype parse_dtype(const std::string& name) {
  if (name == "fp32" || name == "float32") return torch::kFloat;
  if (name == "bf16" || name == "bfloat16") return torch::kBFloat16;
  TORCH_CHECK(false, "--dtype should be fp32 or bf16, got ", name);
}

namespace {

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

moeprune::text::Tokenizer load_tokenizer(const std::string& where) {
  if (is_dir(where)) return moeprune::text::Tokenizer::from_folder(where);
  return moeprune::text::Tokenizer::from_file(where);
}

torch::Tensor read_token_stream(const TokenSource& source, const std::string& checkpoint,
                                int64_t* text_bytes) {
  std::string format = source.format;
  if (format == "auto") format = ends_with(source.path, ".ids") ? "ids" : "text";
  std::vector<int64_t> ids;
  if (format == "ids") {
    ids = moeprune::text::read_token_ids(source.path);
  } else {
    TORCH_CHECK(format == "text", "token format should be auto, text or ids, got ", format);
    std::ifstream in(source.path, std::ios::binary);
    TORCH_CHECK(in.good(), source.path, ": cannot open");
    const std::string content((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
    const auto tokenizer = load_tokenizer(source.tokenizer.empty() ? checkpoint : source.tokenizer);
    ids = tokenizer.encode(content, /*add_special_tokens=*/false);
    if (text_bytes != nullptr) *text_bytes = static_cast<int64_t>(content.size());
  }
  TORCH_CHECK(!ids.empty(), source.path, ": no tokens");
  return torch::tensor(ids, torch::kLong);
}

torch::Tensor calibration_sequences(const torch::Tensor& stream, int64_t samples, int64_t seq_len,
                                    const std::string& what) {
  TORCH_CHECK(samples >= 1 && seq_len >= 1, "--samples and --seq-len should be >= 1, got ", samples,
              " and ", seq_len);
  const int64_t need = samples * seq_len;
  TORCH_CHECK(stream.size(0) >= need, what, ": ", stream.size(0), " tokens; --samples ", samples,
              " x --seq-len ", seq_len, " needs ", need, " (give more text or fewer samples)");
  return stream.narrow(0, 0, need).view({samples, seq_len}).clone();
}

void SlimmingArgs::add_options(CLI::App* command, const std::string& verb) {
  command
      ->add_option("--expert-calibration", calibration_mode,
                   "routed: each expert on the tokens routed to it; all: every expert on every "
                   "token (expert-balanced)")
      ->check(CLI::IsMember({"routed", "all"}))
      ->capture_default_str();
  command->add_flag("--router-weighted", router_weighted,
                    "Weight each routed token by its router weight for the expert (MoE-Pruner)");
  command
      ->add_option("--min-tokens", min_tokens,
                   "An expert routed fewer calibration tokens is calibrated on all of them")
      ->capture_default_str();
  command->add_flag("--not-sequential", not_sequential,
                    "Calibrate every layer on the unchanged model (default: each layer on the "
                    "outputs of the layers changed before it)");
  command
      ->add_option("--targets", targets,
                   "What to " + verb +
                       ", comma-separated: experts, attention, shared_experts, dense (the dense "
                       "layers' MLPs), or all; routers, norms, embeddings and the head never")
      ->capture_default_str();
  command->add_option("--dtype", dtype, "fp32 or bf16 (the calibration forward)")
      ->capture_default_str();
  command
      ->add_option("--scratch-dir", scratch_dir,
                   "Folder for spilled activations and the changed layers")
      ->capture_default_str();
}

moeprune::compression::ExpertSparsityOptions SlimmingArgs::options() const {
  namespace cm = moeprune::compression;
  return cm::ExpertSparsityOptions()
      .calibration(cm::parse_expert_calibration(calibration_mode))
      .router_weighted(router_weighted)
      .min_tokens(min_tokens)
      .sequential(!not_sequential)
      .targets(cm::SparsityTargets::parse(targets));
}

CLI::Option* add_calibration_options(CLI::App* command, TokenSource& source, int64_t& samples,
                                     int64_t& seq_len, int64_t& batch_size,
                                     const std::string& what) {
  auto* option = command->add_option(
      "--calibration", source.path,
      "Calibration text (UTF-8, tokenized with the checkpoint's tokenizer) or token ids (.ids: "
      "whitespace-separated), " +
          what);
  command->add_option("--calibration-format", source.format, "auto, text or ids")
      ->check(CLI::IsMember({"auto", "text", "ids"}))
      ->capture_default_str();
  command->add_option("--tokenizer", source.tokenizer,
                      "Tokenizer folder, tokenizer.json or tokenizer.model (default: the "
                      "checkpoint's)");
  command->add_option("--samples", samples, "Calibration sequences")->capture_default_str();
  command->add_option("--seq-len", seq_len, "Tokens per calibration sequence")
      ->capture_default_str();
  command->add_option("--batch-size", batch_size, "Sequences per forward pass")
      ->capture_default_str();
  return option;
}

}  // namespace cli
