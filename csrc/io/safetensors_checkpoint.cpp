// safetensors::Checkpoint: one file, or a folder of shards with model.safetensors.index.json.
#include <moeprune/io/safetensors.h>

#include "io/json.h"

#include <c10/util/Exception.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <system_error>

namespace moeprune::safetensors {

Checkpoint::Checkpoint(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  std::error_code error;  // the throwing overloads would escape as filesystem_error
  TORCH_CHECK(fs::exists(p, error), path + ": no such file or folder" +
                                        (error ? " (" + error.message() + ")" : std::string()));
  if (fs::is_regular_file(p, error)) {
    directory_ = p.parent_path().empty() ? "." : p.parent_path().string();
    shard_files_.push_back(p.filename().string());
  } else {
    directory_ = path;
    const auto index = p / "model.safetensors.index.json";
    if (fs::exists(index, error)) {
      sharded_ = true;
      const auto j = io::read_json_file(index.string());
      TORCH_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
                  index.string() + ": no \"weight_map\" object");
      if (j.contains("metadata")) {
        index_metadata_ = j["metadata"].dump();
      }
      for (const auto& [name, shard] : j["weight_map"].items()) {
        if (!shard.is_string()) {
          TORCH_CHECK(false,
                      index.string() + ": weight_map entry of '" + name + "' is not a file name");
        }
        const auto file = shard.get<std::string>();
        TORCH_CHECK(
            !file.empty() && file.find('/') == std::string::npos && file != "." && file != "..",
            index.string() + ": weight_map entry of '" + name + "' names '" + file +
                "', not a file in the checkpoint folder");
        if (std::find(shard_files_.begin(), shard_files_.end(), file) == shard_files_.end()) {
          shard_files_.push_back(file);
        }
        shard_of_[name] = file;
      }
    } else if (fs::exists(p / "model.safetensors", error)) {
      shard_files_.push_back("model.safetensors");
    } else {
      TORCH_CHECK(false,
                  path + ": neither model.safetensors nor model.safetensors.index.json is there");
    }
  }
  for (const auto& shard : shard_files_) {
    const auto file_path = (fs::path(directory_) / shard).string();
    if (!fs::exists(file_path, error)) {
      TORCH_CHECK(false, file_path + ": shard named by the index is missing" +
                             (error ? " (" + error.message() + ")" : std::string()));
    }
    auto file = std::make_unique<File>(file_path);
    if (!sharded_) {
      for (const auto& name : file->names()) {
        shard_of_[name] = shard;
      }
    }
    files_.emplace(shard, std::move(file));
  }
  for (const auto& [name, shard] : shard_of_) {
    if (!files_.at(shard)->contains(name)) {
      TORCH_CHECK(false, (fs::path(directory_) / shard).string() + ": tensor '" + name +
                             "' is listed in the index for this shard but is not in it");
    }
  }
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> names;
  names.reserve(shard_of_.size());
  for (const auto& [name, shard] : shard_of_) {
    if (part_of_.count(name) == 0) names.push_back(name);
  }
  for (const auto& [name, decoded] : decoded_) {
    names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

void Checkpoint::add_decoded(Decoded decoded) {
  const auto& name = decoded.info.name;
  // A stored tensor may be decoded under its own name when it is its first part (an FP8 weight
  // read with its block scales).
  const bool own = !decoded.parts.empty() && decoded.parts.front() == name;
  TORCH_CHECK((shard_of_.count(name) == 0 || own) && decoded_.count(name) == 0, directory_,
              ": tensor '", name, "' is stored both as itself and encoded in other tensors");
  TORCH_CHECK(!decoded.parts.empty() && decoded.decode, directory_, ": decoded tensor '", name,
              "' needs its parts and a decoder");
  for (const auto& part : decoded.parts) {
    TORCH_CHECK(shard_of_.count(part) == 1, directory_, ": '", name, "' is stored encoded but ",
                part, " is missing");
    TORCH_CHECK(part_of_.emplace(part, name).second, directory_, ": ", part,
                " is a part of two encoded tensors");
  }
  decoded_.emplace(name, std::move(decoded));
}

void Checkpoint::release(const std::string& name) const {
  const auto it = decoded_.find(name);
  if (it == decoded_.end()) {
    file(shard_of(name)).release(name);
    return;
  }
  for (const auto& part : it->second.parts) file(shard_of_.at(part)).release(part);
}

const std::string& Checkpoint::shard_of(const std::string& name) const {
  const auto decoded = decoded_.find(name);
  if (decoded != decoded_.end()) return shard_of_.at(decoded->second.parts.front());
  const auto it = shard_of_.find(name);
  TORCH_CHECK(it != shard_of_.end(),
              directory_ + ": checkpoint has no tensor named '" + name + "'");
  return it->second;
}

const File& Checkpoint::file(const std::string& shard) const {
  const auto it = files_.find(shard);
  TORCH_CHECK(it != files_.end(), directory_ + ": no shard named '" + shard + "'");
  return *it->second;
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
  const auto it = decoded_.find(name);
  return it != decoded_.end() ? it->second.info : file(shard_of(name)).info(name);
}

torch::Tensor Checkpoint::stored_tensor(const std::string& name) const {
  const auto it = shard_of_.find(name);
  TORCH_CHECK(it != shard_of_.end(),
              directory_ + ": checkpoint stores no tensor named '" + name + "'");
  return file(it->second).tensor(name);
}

torch::Tensor Checkpoint::tensor(const std::string& name) const {
  const auto it = decoded_.find(name);
  if (it == decoded_.end()) return file(shard_of(name)).tensor(name);
  auto t = it->second.decode(*this);
  const auto& i = it->second.info;
  TORCH_CHECK(t.scalar_type() == i.scalar_type && t.sizes() == torch::IntArrayRef(i.shape),
              directory_, ": '", name, "' decodes to ", t.scalar_type(), " ", t.sizes(),
              ", its parts say ", i.scalar_type, " ", i.shape);
  return t;
}

}  // namespace moeprune::safetensors
