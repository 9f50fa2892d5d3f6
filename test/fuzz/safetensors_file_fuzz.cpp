// safetensors::File on arbitrary bytes: refused with a c10::Error, or read; whatever it reads,
// Writer writes back and File reads again to the same names, dtypes, shapes, bytes and metadata.
#include "fuzz_files.h"
#include "fuzz_target.h"

#include <moeprune/io/safetensors.h>

#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

[[noreturn]] void mismatch(const std::string& what) {
  std::fprintf(stderr, "safetensors round trip differs: %s\n", what.c_str());
  std::abort();
}

}  // namespace

MOEPRUNE_FUZZ_TARGET(safetensors_file) {
  namespace st = moeprune::safetensors;
  const std::string input = moeprune_fuzz::scratch_dir() + "/input.safetensors";
  moeprune_fuzz::write_bytes(input, data, size);
  std::unique_ptr<st::File> file;
  moeprune_fuzz::refused_or_accepted([&] { file = std::make_unique<st::File>(input); });
  if (!file) {
    return;
  }
  const std::string copy = moeprune_fuzz::scratch_dir() + "/copy.safetensors";
  {
    st::Writer writer(copy, /*overwrite=*/true);
    for (const auto& name : file->names()) {
      writer.add(name, file->tensor(name));
    }
    writer.set_metadata(file->metadata());
    writer.finish();
  }
  const st::File again(copy);
  if (again.names().size() != file->names().size()) {
    mismatch("tensor count");
  }
  if (again.metadata() != file->metadata()) {
    mismatch("metadata");
  }
  for (const auto& name : file->names()) {
    if (!again.contains(name)) {
      mismatch("'" + name + "' missing");
    }
    const auto& a = file->info(name);
    const auto& b = again.info(name);
    if (a.dtype != b.dtype || a.shape != b.shape || a.nbytes() != b.nbytes()) {
      mismatch("'" + name + "' header");
    }
    if (a.nbytes() != 0 && std::memcmp(file->bytes(name), again.bytes(name), a.nbytes()) != 0) {
      mismatch("'" + name + "' bytes");
    }
  }
}
