#pragma once

// Writing a whole file so that it is never seen half-written: reports, plans, logs and benchmark
// results (the model writers stage whole folders the same way).
#include <string>

namespace moeprune::io {

/// Writes `contents` to `path`, replacing any file there, so that a reader, or a crash at any
/// point, sees either the old file or the complete new one: the bytes go to a temporary file
/// beside `path`, are synced to disk, and the temporary is renamed over `path` (and removed if
/// anything fails). Creates missing parent folders. Throws a c10::Error naming the path and the
/// system's reason (a full disk, no permission, a folder in the way).
void write_file_atomically(const std::string& path, const std::string& contents);

}  // namespace moeprune::io
