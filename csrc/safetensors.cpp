#include <moeprune/safetensors.h>

#include "file_copy.h"

#include <c10/util/Exception.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <utility>

namespace moeprune::safetensors {
namespace {

// The reference implementation refuses headers above 100 MB (safetensors::tensor::MAX_HEADER_SIZE).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DtypeEntry {
  const char* name;
  torch::ScalarType type;
};

constexpr std::array<DtypeEntry, 17> kDtypes{{
    {"BOOL", torch::kBool},
    {"U8", torch::kByte},
    {"I8", torch::kChar},
    {"I16", torch::kShort},
    {"U16", torch::kUInt16},
    {"F16", torch::kHalf},
    {"BF16", torch::kBFloat16},
    {"I32", torch::kInt},
    {"U32", torch::kUInt32},
    {"F32", torch::kFloat},
    {"C64", torch::kComplexFloat},
    {"F64", torch::kDouble},
    {"I64", torch::kLong},
    {"U64", torch::kUInt64},
    {"F8_E4M3", torch::kFloat8_e4m3fn},
    {"F8_E5M2", torch::kFloat8_e5m2},
    {"F8_E8M0", torch::kFloat8_e8m0fnu},
}};

[[noreturn]] void fail(const std::string& message) {
  throw std::runtime_error(message);
}

std::string errno_text() {
  return std::strerror(errno);
}

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return text + "]";
}

}  // namespace

namespace detail {

namespace {

constexpr uint64_t kWritebackWindow = 64ULL << 20;

}  // namespace

SequentialOutput::SequentialOutput(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}

void SequentialOutput::write(const void* data, uint64_t size) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd_, p, std::min(size, kWritebackWindow));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      fail(path_ + ": write failed: " + errno_text());
    }
    p += n;
    size -= static_cast<uint64_t>(n);
    written_ += static_cast<uint64_t>(n);
    pace();
  }
}

void SequentialOutput::copy(const ByteRange& range) {
  if (range.fd < 0) {
    static const std::vector<uint8_t> zeros(1 << 20);
    for (uint64_t left = range.length; left > 0;) {
      const uint64_t n = std::min<uint64_t>(left, zeros.size());
      write(zeros.data(), n);
      left -= n;
    }
    return;
  }
  auto in_offset = static_cast<loff_t>(range.offset);
  uint64_t left = range.length;
  while (left > 0) {
    const ssize_t n =
        ::copy_file_range(range.fd, &in_offset, fd_, nullptr, std::min(left, kWritebackWindow), 0);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) {
      break;
    }
    if (n < 0) {
      fail(path_ + ": copying tensor bytes failed: " + errno_text());
    }
    TORCH_CHECK(n > 0, path_, ": source file ended ", left, " bytes early");
    left -= static_cast<uint64_t>(n);
    written_ += static_cast<uint64_t>(n);
    pace();
  }
  std::vector<uint8_t> buffer(left > 0 ? (8u << 20) : 0);
  while (left > 0) {
    const ssize_t n =
        ::pread(range.fd, buffer.data(), std::min<uint64_t>(left, buffer.size()), in_offset);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      fail(path_ + ": reading tensor bytes failed: " + (n < 0 ? errno_text() : "end of file"));
    }
    write(buffer.data(), static_cast<uint64_t>(n));
    in_offset += n;
    left -= static_cast<uint64_t>(n);
  }
}

// sync_file_range and posix_fadvise are hints: where a file system does not take them, the
// final fsync still makes the file durable.
void SequentialOutput::pace() {
  while (written_ - started_ >= kWritebackWindow) {
    ::sync_file_range(fd_, static_cast<off64_t>(started_), kWritebackWindow, SYNC_FILE_RANGE_WRITE);
    started_ += kWritebackWindow;
    if (started_ - dropped_ > kWritebackWindow) {
      ::sync_file_range(
          fd_, static_cast<off64_t>(dropped_), kWritebackWindow,
          SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
      ::posix_fadvise(fd_, static_cast<off_t>(dropped_), kWritebackWindow, POSIX_FADV_DONTNEED);
      dropped_ += kWritebackWindow;
    }
  }
}

void SequentialOutput::sync() {
  if (::fsync(fd_) != 0) {
    fail(path_ + ": fsync failed: " + errno_text());
  }
}

}  // namespace detail

std::string dtype_name(torch::ScalarType type) {
  for (const auto& d : kDtypes) {
    if (d.type == type) {
      return d.name;
    }
  }
  TORCH_CHECK(false, "safetensors has no dtype name for ", c10::toString(type));
}

torch::ScalarType scalar_type(const std::string& dtype_name) {
  for (const auto& d : kDtypes) {
    if (dtype_name == d.name) {
      return d.type;
    }
  }
  std::string known;
  for (const auto& d : kDtypes) {
    known += (known.empty() ? "" : ", ") + std::string(d.name);
  }
  fail("unknown dtype '" + dtype_name + "' (known: " + known + ")");
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (auto s : shape) {
    n *= s;
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// File

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
    fail(path + ": cannot open: " + errno_text());
  }
  struct stat st {};
  if (::fstat(m->fd, &st) != 0) {
    fail(path + ": cannot stat: " + errno_text());
  }
  if (!S_ISREG(st.st_mode)) {
    fail(path + ": not a regular file");
  }
  m->size = static_cast<uint64_t>(st.st_size);
  if (m->size < 8) {
    fail(path + ": truncated: " + std::to_string(m->size) +
         " bytes, shorter than the 8-byte header length");
  }
  void* base = ::mmap(nullptr, m->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, m->fd, 0);
  if (base == MAP_FAILED) {
    fail(path + ": cannot map: " + errno_text());
  }
  m->base = static_cast<uint8_t*>(base);

  uint64_t header_len = 0;
  std::memcpy(&header_len, m->base, 8);  // little-endian, as on every host we build for
  if (header_len > kMaxHeaderBytes) {
    fail(path + ": header length " + std::to_string(header_len) + " exceeds the 100 MB limit");
  }
  if (header_len > m->size - 8) {
    fail(path + ": header length " + std::to_string(header_len) + " runs past the end of the " +
         std::to_string(m->size) + "-byte file (truncated?)");
  }
  if (header_len < 2) {
    fail(path + ": header of " + std::to_string(header_len) + " bytes cannot hold a JSON object");
  }
  m->data_offset = 8 + header_len;
  const uint64_t data_size = m->size - m->data_offset;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(m->base + 8, m->base + 8 + header_len);
  } catch (const nlohmann::json::parse_error& e) {
    fail(path + ": header is not valid JSON: " + e.what());
  }
  if (!header.is_object()) {
    fail(path + ": header is not a JSON object");
  }

  std::vector<TensorInfo> entries;
  for (const auto& [name, value] : header.items()) {
    const std::string where = path + ": tensor '" + name + "': ";
    if (name == "__metadata__") {
      if (!value.is_object()) {
        fail(path + ": __metadata__ is not an object of strings");
      }
      for (const auto& [key, text] : value.items()) {
        if (!text.is_string()) {
          fail(path + ": __metadata__ value of '" + key + "' is not a string");
        }
        m->metadata[key] = text.get<std::string>();
      }
      continue;
    }
    if (!value.is_object()) {
      fail(where + "entry is not an object");
    }
    for (const auto& [key, unused] : value.items()) {
      (void)unused;
      if (key != "dtype" && key != "shape" && key != "data_offsets") {
        fail(where + "unexpected field '" + key + "'");
      }
    }
    if (!value.contains("dtype") || !value["dtype"].is_string()) {
      fail(where + "dtype missing or not a string");
    }
    if (!value.contains("shape") || !value["shape"].is_array()) {
      fail(where + "shape missing or not an array");
    }
    if (!value.contains("data_offsets") || !value["data_offsets"].is_array() ||
        value["data_offsets"].size() != 2) {
      fail(where + "data_offsets missing or not a pair");
    }
    TensorInfo info;
    info.name = name;
    info.dtype = value["dtype"].get<std::string>();
    try {
      info.scalar_type = scalar_type(info.dtype);
    } catch (const std::runtime_error& e) {
      fail(where + e.what());
    }
    uint64_t numel = 1;
    for (const auto& dim : value["shape"]) {
      if (!dim.is_number_unsigned() && !(dim.is_number_integer() && dim.get<int64_t>() >= 0)) {
        fail(where + "shape " + value["shape"].dump() + " has a dimension that is not a " +
             "non-negative integer");
      }
      const auto d = dim.get<uint64_t>();
      if (d > static_cast<uint64_t>(INT64_MAX) || mul_overflows(numel, d, &numel)) {
        fail(where + "shape " + value["shape"].dump() + " overflows");
      }
      info.shape.push_back(static_cast<int64_t>(d));
    }
    for (const auto& offset : value["data_offsets"]) {
      if (!offset.is_number_unsigned() &&
          !(offset.is_number_integer() && offset.get<int64_t>() >= 0)) {
        fail(where + "data_offsets " + value["data_offsets"].dump() +
             " are not non-negative integers");
      }
    }
    info.begin = value["data_offsets"][0].get<uint64_t>();
    info.end = value["data_offsets"][1].get<uint64_t>();
    if (info.end < info.begin) {
      fail(where + "data_offsets " + value["data_offsets"].dump() + " end before they begin");
    }
    if (info.end > data_size) {
      fail(where + "data_offsets " + value["data_offsets"].dump() + " run past the " +
           std::to_string(data_size) + "-byte data section (file truncated?)");
    }
    uint64_t expected = 0;
    const auto element = static_cast<uint64_t>(c10::elementSize(info.scalar_type));
    if (mul_overflows(numel, element, &expected) || expected != info.nbytes()) {
      fail(where + "shape " + shape_text(info.shape) + " x " + info.dtype + " needs " +
           std::to_string(numel) + " x " + std::to_string(element) + " bytes, data_offsets give " +
           std::to_string(info.nbytes()));
    }
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
    if (info.begin < next) {
      fail(path + ": tensor '" + info.name + "' bytes [" + std::to_string(info.begin) + ", " +
           std::to_string(info.end) + ") overlap those of '" + previous + "' (which end at " +
           std::to_string(next) + ")");
    }
    if (info.begin > next) {
      fail(path + ": " + std::to_string(info.begin - next) + " unused bytes before tensor '" +
           info.name + "' at data offset " + std::to_string(next));
    }
    next = info.end;
    previous = info.name;
  }
  if (next != data_size) {
    fail(path + ": " + std::to_string(data_size - next) +
         " bytes after the last tensor's data (the header does not describe the whole file)");
  }
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
  if (it == mapping_->infos.end()) {
    fail(mapping_->path + ": no tensor named '" + name + "'");
  }
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

// ---------------------------------------------------------------------------------------------
// Writer

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
  if (!overwrite_ && std::filesystem::exists(path_)) {
    fail(path_ + ": already exists (not overwriting)");
  }
}

Writer::~Writer() {
  if (!finished_ && !tmp_path_.empty()) {
    ::unlink(tmp_path_.c_str());
  }
}

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
  TORCH_CHECK(total == nbytes, path_, ": tensor '", name, "' of shape ", shape_text(shape), " ",
              dtype_name(type), " needs ", nbytes, " bytes, its ranges hold ", total);
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

  const auto target = std::filesystem::path(path_);
  std::random_device rd;
  tmp_path_ = (target.parent_path() / ("." + target.filename().string() + ".tmp-" +
                                       std::to_string(::getpid()) + "-" + std::to_string(rd())))
                  .string();
  const int fd = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    const auto reason = errno_text();
    tmp_path_.clear();
    fail(path_ + ": cannot create a temporary file next to it: " + reason);
  }
  try {
    detail::SequentialOutput output(fd, path_);
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
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::close(fd) != 0) {
    fail(path_ + ": close failed: " + errno_text());
  }
  if (!overwrite_ && std::filesystem::exists(path_)) {
    fail(path_ + ": already exists (not overwriting)");
  }
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    fail(path_ + ": cannot rename the temporary file into place: " + errno_text());
  }
  finished_ = true;
  return 8 + header_len + offset;
}

std::map<std::string, torch::Tensor> load_file(const std::string& path) {
  File file(path);
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& name : file.names()) {
    tensors.emplace(name, file.load(name));
  }
  return tensors;
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

// ---------------------------------------------------------------------------------------------
// Checkpoint

Checkpoint::Checkpoint(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  if (!fs::exists(p)) {
    fail(path + ": no such file or folder");
  }
  if (fs::is_regular_file(p)) {
    directory_ = p.parent_path().empty() ? "." : p.parent_path().string();
    shard_files_.push_back(p.filename().string());
  } else {
    directory_ = path;
    const auto index = p / "model.safetensors.index.json";
    if (fs::exists(index)) {
      sharded_ = true;
      std::ifstream in(index);
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(in);
      } catch (const nlohmann::json::parse_error& e) {
        fail(index.string() + ": not valid JSON: " + e.what());
      }
      if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
        fail(index.string() + ": no \"weight_map\" object");
      }
      if (j.contains("metadata")) {
        index_metadata_ = j["metadata"].dump();
      }
      for (const auto& [name, shard] : j["weight_map"].items()) {
        if (!shard.is_string()) {
          fail(index.string() + ": weight_map entry of '" + name + "' is not a file name");
        }
        const auto file = shard.get<std::string>();
        if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..") {
          fail(index.string() + ": weight_map entry of '" + name + "' names '" + file +
               "', not a file in the checkpoint folder");
        }
        if (std::find(shard_files_.begin(), shard_files_.end(), file) == shard_files_.end()) {
          shard_files_.push_back(file);
        }
        shard_of_[name] = file;
      }
    } else if (fs::exists(p / "model.safetensors")) {
      shard_files_.push_back("model.safetensors");
    } else {
      fail(path + ": neither model.safetensors nor model.safetensors.index.json is there");
    }
  }
  for (const auto& shard : shard_files_) {
    const auto file_path = (fs::path(directory_) / shard).string();
    if (!fs::exists(file_path)) {
      fail(file_path + ": shard named by the index is missing");
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
      fail((fs::path(directory_) / shard).string() + ": tensor '" + name +
           "' is listed in the index for this shard but is not in it");
    }
  }
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> names;
  names.reserve(shard_of_.size());
  for (const auto& [name, shard] : shard_of_) {
    names.push_back(name);
  }
  return names;
}

const std::string& Checkpoint::shard_of(const std::string& name) const {
  const auto it = shard_of_.find(name);
  if (it == shard_of_.end()) {
    fail(directory_ + ": checkpoint has no tensor named '" + name + "'");
  }
  return it->second;
}

const File& Checkpoint::file(const std::string& shard) const {
  const auto it = files_.find(shard);
  if (it == files_.end()) {
    fail(directory_ + ": no shard named '" + shard + "'");
  }
  return *it->second;
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
  return file(shard_of(name)).info(name);
}

torch::Tensor Checkpoint::tensor(const std::string& name) const {
  return file(shard_of(name)).tensor(name);
}

}  // namespace moeprune::safetensors
