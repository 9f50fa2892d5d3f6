#pragma once

// The safetensors format (huggingface/safetensors): an 8-byte little-endian header length, a JSON
// header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the
// raw little-endian bytes. Files are memory-mapped and read lazily; headers are validated as
// strictly as the reference implementation does, and every error names the file and the tensor.

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace moeprune::safetensors {

/// The format's dtype name for a torch dtype ("F32", "BF16", ...); throws for dtypes the format
/// has no name for.
std::string dtype_name(torch::ScalarType type);
/// The torch dtype of a format dtype name; throws, listing the known names, for others.
torch::ScalarType scalar_type(const std::string& dtype_name);

/// One tensor's entry in a file's header.
struct TensorInfo {
  std::string name;
  std::string dtype;  ///< the format's name, e.g. "BF16"
  torch::ScalarType scalar_type = torch::kFloat;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  ///< byte offsets within the data section (after the header)
  uint64_t end = 0;
  uint64_t nbytes() const { return end - begin; }
  int64_t numel() const;
};

/// A safetensors file, opened read-only and memory-mapped. Opening reads and validates the header
/// only; a tensor's bytes are read when it is asked for. Copies share the mapping.
class File {
 public:
  /// Opens `path`; throws (c10::Error) naming the file (and tensor) when the header is not
  /// valid: truncated file, header length past the end or above 100 MB, malformed JSON, unknown
  /// dtype, negative or overflowing shape, offsets out of range, overlapping or leaving holes,
  /// a byte count that disagrees with shape x dtype.
  explicit File(const std::string& path);

  const std::string& path() const;
  /// Tensor names in the order of their bytes in the file.
  const std::vector<std::string>& names() const;
  bool contains(const std::string& name) const;
  /// The entry of `name`; throws naming the file when there is none.
  const TensorInfo& info(const std::string& name) const;
  /// The "__metadata__" strings.
  const std::map<std::string, std::string>& metadata() const;
  /// Size of the file in bytes.
  uint64_t file_size() const;
  /// File offset of the data section (8 + header length).
  uint64_t data_offset() const;
  /// The open file descriptor (valid while any copy of this File lives).
  int fd() const;

  /// The tensor as a CPU tensor that shares the mapping (copy-on-write: writing to it never
  /// changes the file). Falls back to a copy when the bytes are not aligned for the dtype.
  torch::Tensor tensor(const std::string& name) const;
  /// The tensor in memory of its own (a copy of the bytes).
  torch::Tensor load(const std::string& name) const;
  /// The bytes of `name` in the mapping.
  const uint8_t* bytes(const std::string& name) const;
  /// Tells the kernel the pages of `name` are no longer needed, so streaming through a large
  /// file does not keep it resident.
  void release(const std::string& name) const;

 private:
  struct Mapping;
  std::shared_ptr<const Mapping> mapping_;
};

/// Where an output tensor's bytes come from when it is written: a tensor in memory, or byte
/// ranges of an open source file (copied by the kernel, never through this process's memory).
struct ByteRange {
  int fd = -1;          ///< -1: `length` zero bytes
  uint64_t offset = 0;  ///< absolute file offset
  uint64_t length = 0;
};

/// Writes one safetensors file. Entries are collected first (tensors are held, file ranges are
/// only recorded), then finish() writes the header and streams the bytes to a temporary file in
/// the destination folder, syncs it and renames it, so a reader never sees a partial file. An
/// unfinished Writer removes its temporary file.
class Writer {
 public:
  /// `overwrite` false: finish() refuses to replace an existing file.
  explicit Writer(std::string path, bool overwrite = false);
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  /// Adds a tensor (any device; made contiguous and moved to the CPU when written).
  void add(const std::string& name, const torch::Tensor& tensor);
  /// Adds a tensor whose bytes are the concatenation of `ranges` of open files.
  void add_ranges(const std::string& name, torch::ScalarType type, std::vector<int64_t> shape,
                  std::vector<ByteRange> ranges);
  /// Adds `name` of `source` unchanged, byte for byte.
  void add_copy(const std::string& name, const File& source, const std::string& source_name = "");
  void set_metadata(std::map<std::string, std::string> metadata);

  /// Bytes of tensor data added so far.
  uint64_t data_bytes() const { return data_bytes_; }
  /// Writes, syncs and renames; returns the file's size.
  uint64_t finish();

 private:
  struct Entry;
  std::string path_;
  bool overwrite_;
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
  uint64_t data_bytes_ = 0;
  bool finished_ = false;
};

/// Reads every tensor of a file into memory (copies), keyed by name.
std::map<std::string, torch::Tensor> load_file(const std::string& path);
/// Writes `tensors` (and `metadata`) to `path` atomically.
void save_file(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
               const std::map<std::string, std::string>& metadata = {}, bool overwrite = true);

/// A checkpoint: one file, or a folder holding model.safetensors or shards listed in
/// model.safetensors.index.json ({"metadata": {...}, "weight_map": {tensor: shard file}}).
/// Opening reads every shard's header (tensor bytes stay unread until asked for) and checks that
/// every tensor the index names is in its shard.
class Checkpoint {
 public:
  explicit Checkpoint(const std::string& path);

  /// The folder (or the file's folder).
  const std::string& directory() const { return directory_; }
  /// True when the checkpoint has an index.json.
  bool sharded() const { return sharded_; }
  /// Shard file names (relative to directory()), in the order they appear.
  const std::vector<std::string>& shard_files() const { return shard_files_; }
  /// All tensor names, sorted.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const {
    return shard_of_.count(name) == 1 || decoded_.count(name) == 1;
  }
  /// The shard file (relative name) holding `name` (a decoded tensor: its first part); throws
  /// naming the checkpoint.
  const std::string& shard_of(const std::string& name) const;
  const File& file(const std::string& shard) const;
  const TensorInfo& info(const std::string& name) const;
  torch::Tensor tensor(const std::string& name) const;
  /// Lets the pages of `name` (a decoded tensor: of its parts) go (File::release).
  void release(const std::string& name) const;

  /// A tensor the files store encoded in other tensors, its `parts` (compressed-tensors' sparse
  /// and pack-quantized formats, FP8 weights with block scales: hf/compressed_tensors_*.h,
  /// hf/fp8_blocks.h); the first part may be the tensor itself, stored in another dtype. Once
  /// added, names() lists it instead of its parts, info() gives `info` (dtype and shape as
  /// decoded; no byte range) and tensor() returns `decode(*this)` (which reads the parts with
  /// stored_tensor). Readers only: the writers copy, drop or rename the stored parts.
  struct Decoded {
    TensorInfo info;
    std::vector<std::string> parts;
    std::function<torch::Tensor(const Checkpoint&)> decode;
  };
  void add_decoded(Decoded decoded);
  /// Tensors added by add_decoded.
  size_t decoded_count() const { return decoded_.size(); }
  bool is_decoded(const std::string& name) const { return decoded_.count(name) == 1; }
  /// A tensor as the files store it (a decoded tensor's part, or a tensor decoded under its own
  /// name: its stored bytes), never decoded.
  torch::Tensor stored_tensor(const std::string& name) const;
  /// The index's "metadata" object as JSON text ("{}" when not sharded).
  const std::string& index_metadata() const { return index_metadata_; }

 private:
  std::string directory_;
  bool sharded_ = false;
  std::vector<std::string> shard_files_;
  std::map<std::string, std::string> shard_of_;
  std::string index_metadata_ = "{}";
  mutable std::map<std::string, std::unique_ptr<File>> files_;
  std::map<std::string, Decoded> decoded_;
  std::map<std::string, std::string> part_of_;  // a decoded tensor's part -> the tensor
};

}  // namespace moeprune::safetensors
