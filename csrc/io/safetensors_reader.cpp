// safetensors::File: one file, memory-mapped copy-on-write, its header validated like the
// reference implementation's (huggingface/safetensors, safetensors/src/tensor.rs).
#include <moeprune/io/safetensors.h>

#include "io/json.h"
#include "io/posix_file.h"

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <tuple>

namespace moeprune::safetensors {
namespace {

// The reference implementation refuses headers above 100 MB (safetensors::tensor::MAX_HEADER_SIZE).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

using io::errno_text;

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

}  // namespace

struct File::Mapping {
  std::string path;
  int fd = -1;
  uint64_t size = 0;
  uint8_t* base = nullptr;
  uint64_t data_offset = 0;
  std::vector<std::string> names;
  std::map<std::string, TensorInfo> infos;
  std::map<std::string, std::string> metadata;

  ~Mapping() {
    if (base != nullptr) {
      ::munmap(base, size);
    }
    if (fd >= 0) {
      ::close(fd);
    }
  }
};

File::File(const std::string& path) {
  auto m = std::make_shared<Mapping>();
  m->path = path;
  m->fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (m->fd < 0) {
    TORCH_CHECK(false, path + ": cannot open: " + errno_text());
  }
  struct stat st {};
  TORCH_CHECK(::fstat(m->fd, &st) == 0, path + ": cannot stat: " + errno_text());
  TORCH_CHECK(S_ISREG(st.st_mode), path + ": not a regular file");
  m->size = static_cast<uint64_t>(st.st_size);
  TORCH_CHECK(m->size >= 8, path + ": truncated: " + std::to_string(m->size) +
                                " bytes, shorter than the 8-byte header length");
  void* base = ::mmap(nullptr, m->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, m->fd, 0);
  TORCH_CHECK(base != MAP_FAILED, path + ": cannot map: " + errno_text());
  m->base = static_cast<uint8_t*>(base);

  uint64_t header_len = 0;
  std::memcpy(&header_len, m->base, 8);  // little-endian, as on every host we build for
  TORCH_CHECK(header_len <= kMaxHeaderBytes,
              path + ": header length " + std::to_string(header_len) + " exceeds the 100 MB limit");
  TORCH_CHECK(header_len <= m->size - 8, path + ": header length " + std::to_string(header_len) +
                                             " runs past the end of the " +
                                             std::to_string(m->size) + "-byte file (truncated?)");
  TORCH_CHECK(header_len >= 2, path + ": header of " + std::to_string(header_len) +
                                   " bytes cannot hold a JSON object");
  m->data_offset = 8 + header_len;
  const uint64_t data_size = m->size - m->data_offset;

  const auto header = io::parse_json(
      std::string_view(reinterpret_cast<const char*>(m->base) + 8, header_len), path + ": header");
  TORCH_CHECK(header.is_object(), path + ": header is not a JSON object");

  std::vector<TensorInfo> entries;
  for (const auto& [name, value] : header.items()) {
    const std::string where = path + ": tensor '" + name + "': ";
    if (name == "__metadata__") {
      if (!value.is_object()) {
        TORCH_CHECK(false, path + ": __metadata__ is not an object of strings");
      }
      for (const auto& [key, text] : value.items()) {
        TORCH_CHECK(text.is_string(),
                    path + ": __metadata__ value of '" + key + "' is not a string");
        m->metadata[key] = text.get<std::string>();
      }
      continue;
    }
    TORCH_CHECK(value.is_object(), where + "entry is not an object");
    for (const auto& [key, unused] : value.items()) {
      (void)unused;
      TORCH_CHECK(key == "dtype" || key == "shape" || key == "data_offsets",
                  where + "unexpected field '" + key + "'");
    }
    TORCH_CHECK(value.contains("dtype") && value["dtype"].is_string(),
                where + "dtype missing or not a string");
    TORCH_CHECK(value.contains("shape") && value["shape"].is_array(),
                where + "shape missing or not an array");
    TORCH_CHECK(value.contains("data_offsets") && value["data_offsets"].is_array() &&
                    value["data_offsets"].size() == 2,
                where + "data_offsets missing or not a pair");
    TensorInfo info;
    info.name = name;
    info.dtype = value["dtype"].get<std::string>();
    try {
      info.scalar_type = scalar_type(info.dtype);
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, where + e.what_without_backtrace());
    }
    uint64_t numel = 1;
    for (const auto& dim : value["shape"]) {
      TORCH_CHECK(dim.is_number_unsigned() || (dim.is_number_integer() && dim.get<int64_t>() >= 0),
                  where + "shape " + value["shape"].dump() + " has a dimension that is not a " +
                      "non-negative integer");
      const auto d = dim.get<uint64_t>();
      TORCH_CHECK(d <= static_cast<uint64_t>(INT64_MAX) && !mul_overflows(numel, d, &numel),
                  where + "shape " + value["shape"].dump() + " overflows");
      info.shape.push_back(static_cast<int64_t>(d));
    }
    for (const auto& offset : value["data_offsets"]) {
      TORCH_CHECK(
          offset.is_number_unsigned() || (offset.is_number_integer() && offset.get<int64_t>() >= 0),
          where + "data_offsets " + value["data_offsets"].dump() +
              " are not non-negative integers");
    }
    info.begin = value["data_offsets"][0].get<uint64_t>();
    info.end = value["data_offsets"][1].get<uint64_t>();
    TORCH_CHECK(info.end >= info.begin,
                where + "data_offsets " + value["data_offsets"].dump() + " end before they begin");
    TORCH_CHECK(info.end <= data_size, where + "data_offsets " + value["data_offsets"].dump() +
                                           " run past the " + std::to_string(data_size) +
                                           "-byte data section (file truncated?)");
    uint64_t expected = 0;
    const auto element = static_cast<uint64_t>(c10::elementSize(info.scalar_type));
    TORCH_CHECK(!mul_overflows(numel, element, &expected) && expected == info.nbytes(),
                where + "shape " + "[" + c10::Join(", ", info.shape) + "]" + " x " + info.dtype +
                    " needs " + std::to_string(numel) + " x " + std::to_string(element) +
                    " bytes, data_offsets give " + std::to_string(info.nbytes()));
    entries.push_back(std::move(info));
  }

  // Like the reference implementation: the tensors tile the data section, in offset order,
  // without overlap and without holes.
  std::sort(entries.begin(), entries.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  uint64_t next = 0;
  std::string previous;
  for (const auto& info : entries) {
    TORCH_CHECK(info.begin >= next, path + ": tensor '" + info.name + "' bytes [" +
                                        std::to_string(info.begin) + ", " +
                                        std::to_string(info.end) + ") overlap those of '" +
                                        previous + "' (which end at " + std::to_string(next) + ")");
    TORCH_CHECK(info.begin <= next, path + ": " + std::to_string(info.begin - next) +
                                        " unused bytes before tensor '" + info.name +
                                        "' at data offset " + std::to_string(next));
    next = info.end;
    previous = info.name;
  }
  TORCH_CHECK(
      next == data_size,
      path + ": " + std::to_string(data_size - next) +
          " bytes after the last tensor's data (the header does not describe the whole file)");
  for (auto& info : entries) {
    m->names.push_back(info.name);
    m->infos.emplace(info.name, std::move(info));
  }
  mapping_ = std::move(m);
}

const std::string& File::path() const {
  return mapping_->path;
}
const std::vector<std::string>& File::names() const {
  return mapping_->names;
}
bool File::contains(const std::string& name) const {
  return mapping_->infos.count(name) == 1;
}
const std::map<std::string, std::string>& File::metadata() const {
  return mapping_->metadata;
}
uint64_t File::file_size() const {
  return mapping_->size;
}
uint64_t File::data_offset() const {
  return mapping_->data_offset;
}
int File::fd() const {
  return mapping_->fd;
}

const TensorInfo& File::info(const std::string& name) const {
  const auto it = mapping_->infos.find(name);
  TORCH_CHECK(it != mapping_->infos.end(), mapping_->path + ": no tensor named '" + name + "'");
  return it->second;
}

const uint8_t* File::bytes(const std::string& name) const {
  return mapping_->base + mapping_->data_offset + info(name).begin;
}

torch::Tensor File::tensor(const std::string& name) const {
  const auto& i = info(name);
  const auto options = torch::TensorOptions().dtype(i.scalar_type);
  if (i.nbytes() == 0) {
    return torch::empty(i.shape, options);
  }
  auto* data = const_cast<uint8_t*>(bytes(name));  // NOLINT: private (copy-on-write) mapping
  if (reinterpret_cast<uintptr_t>(data) % c10::elementSize(i.scalar_type) != 0) {
    auto out = torch::empty(i.shape, options);
    std::memcpy(out.data_ptr(), data, i.nbytes());
    return out;
  }
  auto keep = mapping_;
  return torch::from_blob(
      data, i.shape, [keep](void*) {}, options);
}

torch::Tensor File::load(const std::string& name) const {
  return tensor(name).clone();
}

void File::release(const std::string& name) const {
  const auto& i = info(name);
  const auto page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t begin = (mapping_->data_offset + i.begin) / page * page;
  const uint64_t end = mapping_->data_offset + i.end;
  if (end > begin) {
    ::madvise(mapping_->base + begin, end - begin, MADV_DONTNEED);
  }
}

std::map<std::string, torch::Tensor> load_file(const std::string& path) {
  File file(path);
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& name : file.names()) {
    tensors.emplace(name, file.load(name));
  }
  return tensors;
}

}  // namespace moeprune::safetensors
