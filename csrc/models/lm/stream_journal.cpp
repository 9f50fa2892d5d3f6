#include <moeprune/models/lm/stream_journal.h>

#include <moeprune/io/atomic_write.h>
#include <moeprune/io/safetensors.h>

#include "io/json.h"
#include "io/posix_file.h"

#include <c10/util/Exception.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

namespace moeprune::lm {
namespace {

constexpr const char* kEntry = "journal.json";

std::string activations_name(int64_t layers_done) {
  return "activations-" + std::to_string(layers_done) + ".safetensors";
}

std::string batch_name(size_t b) {
  char name[32];
  std::snprintf(name, sizeof(name), "batch_%06zu", b);
  return name;
}

}  // namespace

StreamJournal::StreamJournal(std::string dir, std::string fingerprint)
    : dir_(std::move(dir)),
      fingerprint_(std::move(fingerprint)),
      kill_after_(kill_after_from_environment()) {
  TORCH_CHECK(!dir_.empty(), "StreamJournal: empty folder name");
  if (::mkdir(dir_.c_str(), 0755) != 0) {
    TORCH_CHECK(errno == EEXIST, dir_,
                ": cannot create the journal folder: ", std::strerror(errno));
  }
  const auto entry = dir_ + "/" + kEntry;
  if (!io::exists(entry)) return;
  const auto j = io::read_json_file(entry, "a moeprune journal");
  TORCH_CHECK(j.is_object() && j.value("fingerprint", std::string()) == fingerprint_, dir_,
              ": a journal of another run (different checkpoint, inputs or options); remove the "
              "folder to start over, or rerun with the arguments it was made with");
  layers_done_ = j.at("layers_done").get<int64_t>();
  state_ = j.value("state", std::string());
  TORCH_CHECK(layers_done_ >= 0 && io::exists(dir_ + "/" + activations_name(layers_done_)), dir_,
              ": the journal names layer ", layers_done_, " but its activations are missing");
}

std::vector<torch::Tensor> StreamJournal::activations() const {
  TORCH_CHECK(layers_done_ > 0, dir_, ": the journal holds no activations yet");
  const auto tensors = safetensors::load_file(dir_ + "/" + activations_name(layers_done_));
  std::vector<torch::Tensor> out;
  for (size_t b = 0; b < tensors.size(); ++b) {
    const auto it = tensors.find(batch_name(b));
    TORCH_CHECK(it != tensors.end(), dir_, ": the journal's activations lack ", batch_name(b));
    out.push_back(it->second);
  }
  return out;
}

void StreamJournal::save(int64_t layers_done, const std::vector<torch::Tensor>& activations,
                         const std::string& state) {
  std::map<std::string, torch::Tensor> tensors;
  for (size_t b = 0; b < activations.size(); ++b) tensors[batch_name(b)] = activations[b];
  safetensors::save_file(dir_ + "/" + activations_name(layers_done), tensors, {},
                         /*overwrite=*/true);
  const nlohmann::json entry{
      {"fingerprint", fingerprint_}, {"layers_done", layers_done}, {"state", state}};
  io::write_file_atomically(dir_ + "/" + kEntry, entry.dump(1) + "\n");
  if (layers_done_ > 0 && layers_done_ != layers_done) {
    ::unlink((dir_ + "/" + activations_name(layers_done_)).c_str());
  }
  layers_done_ = layers_done;
  state_ = state;
  if (kill_after_ == layers_done) {
    std::fflush(nullptr);
    std::raise(SIGKILL);
  }
}

void StreamJournal::remove() {
  io::remove_flat_folder(dir_);
}

int64_t StreamJournal::kill_after_from_environment() {
  const char* value = std::getenv("MOEPRUNE_JOURNAL_KILL_AFTER");
  return value == nullptr ? -1 : std::atoll(value);
}

}  // namespace moeprune::lm
