// The std::filesystem calls a program linking moeprune reaches for. libtorch.so (the PyPI wheel)
// exports its own copies of some std::filesystem functions; when the program's libstdc++ comes
// after torch in its DT_NEEDED list, calls resolve half to one copy and half to the other, and
// remove_all crashed. run.cmake links this file twice, with and without libstdc++ first
// (docs/building.md "Linking"), and requires the linked-first one to pass.
#include <moeprune/layers/moe_layer.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  // A moeprune call, so the program really uses the library and torch.
  const auto names = moeprune::MoELayerOptions::preset_names();
  const fs::path root = fs::path(argc > 1 ? argv[1] : fs::temp_directory_path()) / "fs-probe";
  fs::remove_all(root);
  fs::create_directories(root / "a" / "b");
  std::ofstream(root / "a" / "b" / "x.txt") << "x";
  std::ofstream(root / "a" / "y.txt") << "yy";
  int entries = 0;
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    entries += entry.is_regular_file() ? 1 : 0;
  }
  int listed = 0;
  for (const auto& entry : fs::directory_iterator(root / "a")) {
    listed += entry.exists() ? 1 : 0;
  }
  fs::copy(root / "a", root / "copy", fs::copy_options::recursive);
  fs::copy_file(root / "a" / "y.txt", root / "z.txt");
  fs::rename(root / "z.txt", root / "w.txt");
  const auto size = fs::file_size(root / "w.txt");
  const auto canonical = fs::weakly_canonical(root / "a" / ".." / "w.txt");
  const auto removed = fs::remove_all(root);
  const bool ok = !names.empty() && entries == 2 && listed == 2 && size == 2 &&
                  canonical == fs::canonical(root.parent_path()) / "fs-probe" / "w.txt" &&
                  removed == 10 && !fs::exists(root);  // 4 folders, 6 files
  std::cout << "std::filesystem probe: " << entries << " files, " << listed << " listed, removed "
            << removed << (ok ? " ok" : " FAILED") << std::endl;
  return ok ? 0 : 1;
}
