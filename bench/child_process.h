#pragma once

// Child processes for the benchmarks: run a command, measuring its wall time and its own peak
// resident memory; drop the page cache between runs where allowed.
#include <string>
#include <vector>

namespace bench {

struct RunResult {
  double seconds = 0;
  double peak_rss_mb = 0;
  int status = 0;
};

/// Runs argv[0] with `argv` (PATH lookup) and waits; the peak RSS is the child's own VmHWM,
/// polled every 20 ms (wait4()'s ru_maxrss would count the pages the fork shared with this
/// parent before exec).
RunResult run(const std::vector<std::string>& argv);

/// sync, then drop the page cache (needs root); false when not allowed.
bool drop_caches();

}  // namespace bench
