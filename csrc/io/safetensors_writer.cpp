// safetensors::Writer: tensors and byte ranges of other files streamed into a new file under a
// temporary name, synced and renamed into place.
#include <moeprune/io/safetensors.h>

#include "io/file_copy.h"
#include "io/posix_file.h"

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <filesystem>

namespace moeprune::safetensors {

struct Writer::Entry {
  std::string name;
  torch::ScalarType type;
  std::vector<int64_t> shape;
  uint64_t nbytes = 0;
  torch::Tensor tensor;
  std::vector<ByteRange> ranges;
};

Writer::Writer(std::string path, bool overwrite) : path_(std::move(path)), overwrite_(overwrite) {
  TORCH_CHECK(!path_.empty(), "safetensors::Writer: empty path");
  TORCH_CHECK(overwrite_ || !std::filesystem::exists(path_), path_,
              ": already exists (not overwriting)");
}

// An unfinished writer has nothing on disk: finish() writes and renames in one go.
Writer::~Writer() = default;

void Writer::add(const std::string& name, const torch::Tensor& tensor) {
  TORCH_CHECK(tensor.defined(), path_, ": tensor '", name, "' is undefined");
  Entry e;
  e.name = name;
  e.type = tensor.scalar_type();
  (void)dtype_name(e.type);  // refuses dtypes the format cannot name
  e.shape = tensor.sizes().vec();
  e.nbytes = static_cast<uint64_t>(tensor.numel()) * tensor.element_size();
  e.tensor = tensor;
  for (const auto& other : entries_) {
    TORCH_CHECK(other.name != name, path_, ": tensor '", name, "' added twice");
  }
  TORCH_CHECK(name != "__metadata__", path_, ": '__metadata__' is not a tensor name");
  data_bytes_ += e.nbytes;
  entries_.push_back(std::move(e));
}

void Writer::add_ranges(const std::string& name, torch::ScalarType type, std::vector<int64_t> shape,
                        std::vector<ByteRange> ranges) {
  (void)dtype_name(type);
  uint64_t numel = 1;
  for (auto s : shape) {
    TORCH_CHECK(s >= 0, path_, ": tensor '", name, "' has a negative dimension");
    numel *= static_cast<uint64_t>(s);
  }
  const uint64_t nbytes = numel * c10::elementSize(type);
  uint64_t total = 0;
  for (const auto& r : ranges) {
    total += r.length;
  }
  TORCH_CHECK(total == nbytes, path_, ": tensor '", name, "' of shape ",
              "[" + c10::Join(", ", shape) + "]", " ", dtype_name(type), " needs ", nbytes,
              " bytes, its ranges hold ", total);
  for (const auto& other : entries_) {
    TORCH_CHECK(other.name != name, path_, ": tensor '", name, "' added twice");
  }
  Entry e;
  e.name = name;
  e.type = type;
  e.shape = std::move(shape);
  e.nbytes = nbytes;
  e.ranges = std::move(ranges);
  data_bytes_ += nbytes;
  entries_.push_back(std::move(e));
}

void Writer::add_copy(const std::string& name, const File& source, const std::string& source_name) {
  const auto& i = source.info(source_name.empty() ? name : source_name);
  add_ranges(name, i.scalar_type, i.shape,
             {ByteRange{source.fd(), source.data_offset() + i.begin, i.nbytes()}});
}

void Writer::set_metadata(std::map<std::string, std::string> metadata) {
  metadata_ = std::move(metadata);
}

uint64_t Writer::finish() {
  TORCH_CHECK(!finished_, path_, ": finish() called twice");
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    header["__metadata__"] = metadata_;
  }
  uint64_t offset = 0;
  for (const auto& e : entries_) {
    header[e.name] = {{"dtype", dtype_name(e.type)},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + e.nbytes}}};
    offset += e.nbytes;
  }
  std::string text = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned (as the reference writer does).
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();

  io::AtomicFile file(path_, overwrite_);
  detail::SequentialOutput output(file.fd(), path_);
  output.write(&header_len, 8);
  output.write(text.data(), text.size());
  for (const auto& e : entries_) {
    if (e.tensor.defined()) {
      const auto t = e.tensor.detach().to(torch::kCPU).contiguous();
      output.write(t.data_ptr(), e.nbytes);
    } else {
      for (const auto& r : e.ranges) {
        output.copy(r);
      }
    }
  }
  output.sync();
  file.commit();
  finished_ = true;
  return 8 + header_len + offset;
}

void save_file(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
               const std::map<std::string, std::string>& metadata, bool overwrite) {
  Writer writer(path, overwrite);
  for (const auto& [name, tensor] : tensors) {
    writer.add(name, tensor);
  }
  writer.set_metadata(metadata);
  writer.finish();
}

}  // namespace moeprune::safetensors
