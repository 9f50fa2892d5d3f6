#include <moeprune/io/checkpoint.h>

#include "io/file_copy.h"
#include "io/posix_file.h"

#include <torch/serialize.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>

namespace moeprune {
namespace {

constexpr const char* kFormat = "moeprune-checkpoint-1";

std::string shape_string(at::IntArrayRef sizes) {
  std::ostringstream s;
  s << sizes;
  return s.str();
}

std::map<std::string, torch::Tensor> named_state(torch::nn::Module& model) {
  std::map<std::string, torch::Tensor> state;
  for (const auto& p : model.named_parameters()) {
    state[p.key()] = p.value();
  }
  for (const auto& b : model.named_buffers()) {
    state[b.key()] = b.value();
  }
  return state;
}

torch::serialize::InputArchive open_archive(const std::string& path) {
  TORCH_CHECK(std::filesystem::exists(path), "checkpoint ", path, ": file not found");
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "checkpoint ", path, ": not a readable checkpoint (",
                e.what_without_backtrace(), ")");
  }
  c10::IValue format;
  TORCH_CHECK(
      archive.try_read("format", format) && format.isString() && format.toStringRef() == kFormat,
      "checkpoint ", path, ": not a moeprune checkpoint (no '", kFormat, "' marker)");
  return archive;
}

}  // namespace

void save_checkpoint(const std::string& path, torch::nn::Module& model, const std::string& metadata,
                     torch::optim::Optimizer* optimizer) {
  torch::serialize::OutputArchive archive;
  archive.write("format", c10::IValue(std::string(kFormat)));
  archive.write("metadata", c10::IValue(metadata));
  torch::serialize::OutputArchive weights;
  for (const auto& [name, tensor] : named_state(model)) {
    weights.write(name, tensor.detach());
  }
  archive.write("model", weights);
  if (optimizer != nullptr) {
    torch::serialize::OutputArchive state;
    optimizer->save(state);
    archive.write("optimizer", state);
  }
  const std::filesystem::path target(path);
  if (target.has_parent_path()) {
    std::filesystem::create_directories(target.parent_path());
  }
  // Serialised in memory first (torch's zip writer must not see a failing write: it would throw
  // from its destructor), then written to a temporary beside the target, synced and renamed
  // over it: a crash or a full disk leaves the old checkpoint as it was, and the temporary is
  // removed on any error.
  std::ostringstream bytes;
  archive.save_to(bytes);
  const auto text = bytes.str();
  io::AtomicFile file(path, /*overwrite=*/true);
  {
    safetensors::detail::SequentialOutput out(file.fd(), file.temporary_path());
    out.write(text.data(), text.size());
    out.sync();
  }
  file.commit();
}

std::string read_checkpoint_metadata(const std::string& path) {
  auto archive = open_archive(path);
  c10::IValue metadata;
  TORCH_CHECK(archive.try_read("metadata", metadata) && metadata.isString(), "checkpoint ", path,
              ": no metadata");
  return metadata.toStringRef();
}

void load_checkpoint(const std::string& path, torch::nn::Module& model,
                     torch::optim::Optimizer* optimizer) {
  auto archive = open_archive(path);
  torch::serialize::InputArchive weights;
  TORCH_CHECK(archive.try_read("model", weights), "checkpoint ", path, ": no model weights");
  const auto state = named_state(model);
  const auto saved_keys = weights.keys();
  // Check everything before touching the model, so a refused checkpoint changes nothing.
  std::map<std::string, torch::Tensor> loaded;
  for (const auto& key : saved_keys) {
    TORCH_CHECK(state.count(key) == 1, "checkpoint ", path, ": holds tensor '", key,
                "' that the model does not have (a checkpoint of another model?)");
    torch::Tensor t;
    weights.read(key, t);
    const auto& expected = state.at(key);
    TORCH_CHECK(t.sizes() == expected.sizes(), "checkpoint ", path, ": tensor '", key,
                "' has shape ", shape_string(t.sizes()), " but the model expects ",
                shape_string(expected.sizes()));
    loaded[key] = t;
  }
  for (const auto& [name, tensor] : state) {
    TORCH_CHECK(loaded.count(name) == 1, "checkpoint ", path, ": lacks tensor '", name,
                "' that the model has (a checkpoint of another model?)");
  }
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, tensor] : state) {
      tensor.copy_(loaded.at(name));
    }
  }
  if (optimizer != nullptr) {
    torch::serialize::InputArchive opt_state;
    TORCH_CHECK(archive.try_read("optimizer", opt_state), "checkpoint ", path,
                ": holds no optimizer state");
    optimizer->load(opt_state);
  }
}

}  // namespace moeprune
