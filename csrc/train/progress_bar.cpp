#include <moeprune/train/progress_bar.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace moeprune {
namespace {

std::string clock_text(double seconds) {
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%ld:%02ld", static_cast<long>(s / 60),
                static_cast<long>(s % 60));
  return buf;
}

}  // namespace

ProgressBar::ProgressBar(int64_t total, std::string label, std::string unit, bool enabled)
    : total_(std::max<int64_t>(total, 1)),
      label_(std::move(label)),
      unit_(std::move(unit)),
      enabled_(enabled),
      tty_(isatty(fileno(stderr)) != 0),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

double ProgressBar::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void ProgressBar::update(int64_t done, const std::string& note) {
  last_done_ = done;
  if (!enabled_) {
    return;
  }
  const auto now = std::chrono::steady_clock::now();
  const int64_t decile = done * 10 / total_;
  if (tty_) {
    if (std::chrono::duration<double>(now - last_draw_).count() < 0.1 && done < total_) {
      return;
    }
  } else if (decile == last_decile_ && done < total_) {
    return;
  }
  last_decile_ = decile;
  last_draw_ = now;
  draw(done, note, false);
}

void ProgressBar::skip(int64_t units) {
  skipped_ += units;
}

void ProgressBar::finish(const std::string& note) {
  if (enabled_) {
    draw(last_done_, note, true);
  }
}

void ProgressBar::draw(int64_t done, const std::string& note, bool final) {
  constexpr int kWidth = 24;
  const double fraction = std::min(1.0, static_cast<double>(done) / static_cast<double>(total_));
  std::string bar(static_cast<size_t>(fraction * kWidth), '#');
  bar.resize(kWidth, '.');
  const double elapsed = elapsed_seconds();
  const auto worked = static_cast<double>(std::max<int64_t>(done - skipped_, 0));
  const double rate = elapsed > 0 ? worked / elapsed : 0.0;
  const auto left = static_cast<double>(std::max<int64_t>(total_ - done, 0));
  const std::string when =
      final ? clock_text(elapsed) + " total"
            : clock_text(elapsed) + " elapsed, ETA " +
                  (worked > 0 ? clock_text(left / rate) : (left > 0 ? "?" : clock_text(0)));
  std::fprintf(stderr, "%s%s [%s] %ld/%ld %s, %.1f %s/s, %s  %s%s", tty_ ? "\r\033[K" : "",
               label_.c_str(), bar.c_str(), static_cast<long>(done), static_cast<long>(total_),
               unit_.c_str(), rate, unit_.c_str(), when.c_str(), note.c_str(),
               (tty_ && !final) ? "" : "\n");
  std::fflush(stderr);
}

}  // namespace moeprune
