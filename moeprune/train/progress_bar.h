#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace moeprune {

/// A progress bar on stderr: done/total, rate, elapsed time and ETA. On a terminal it redraws
/// one line; otherwise (logs, CI) it prints a line at every tenth of the work.
class ProgressBar {
 public:
  ProgressBar(int64_t total, std::string label, std::string unit = "it", bool enabled = true);
  /// Records that `done` of `total` units are finished; `note` is appended (e.g. the loss).
  void update(int64_t done, const std::string& note = "");
  /// Counts `units` as done without work (e.g. runs reused from an earlier, interrupted run), so
  /// they do not inflate the rate and shorten the ETA. Call update() afterwards as usual.
  void skip(int64_t units);
  /// Ends the line.
  void finish(const std::string& note = "");
  double elapsed_seconds() const;

 private:
  void draw(int64_t done, const std::string& note, bool final);

  int64_t total_;
  std::string label_, unit_;
  bool enabled_, tty_;
  int64_t last_decile_ = -1;
  int64_t last_done_ = 0;
  int64_t skipped_ = 0;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace moeprune
