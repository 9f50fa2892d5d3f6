#pragma once

// A journal of finished runs, so that a long sweep that is interrupted (a closed terminal, a
// machine that goes away) resumes where it stopped instead of starting over. Each finished run is
// one JSON line appended to the file and flushed at once; a line cut short by a crash is skipped
// on reading. Lines belong to the settings they were run with (the checkpoints' contents, the
// number of fine-tuning steps, ...): a run whose settings changed is run again.
#include <moeprune/io/fingerprint.h>

#include <c10/util/Exception.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>

namespace experiments {

/// FNV-1a of a file's bytes: names a checkpoint's contents in a journal's settings, so that a
/// retrained checkpoint (--fresh) does not resume runs made with the old one.
inline std::string file_fingerprint(const std::string& path) {
  return moeprune::io::Fingerprint().add_file(path).hex();
}

class RunJournal {
 public:
  /// Opens (or creates) the journal at `path`; runs recorded there under other `settings` are
  /// ignored. An empty path gives a journal that remembers nothing.
  RunJournal(std::string path, nlohmann::json settings)
      : path_(std::move(path)), settings_(std::move(settings)) {
    if (path_.empty() || !std::filesystem::exists(path_)) {
      return;
    }
    std::ifstream in(path_);
    for (std::string line; std::getline(in, line);) {
      const auto entry = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (entry.is_discarded() || !entry.is_object() || !entry.contains("key") ||
          !entry.contains("settings") || !entry.contains("run")) {
        ++skipped_;
        continue;
      }
      if (entry["settings"] == settings_) {
        runs_[entry["key"].get<std::string>()] = {
            entry["run"], entry.contains("seconds") ? entry["seconds"].get<double>() : -1.0};
      }
    }
  }

  /// The recorded run named `key`, without counting it as reused (to check it before use).
  std::optional<nlohmann::json> peek(const std::string& key) const {
    const auto it = runs_.find(key);
    return it == runs_.end() ? std::nullopt : std::optional<nlohmann::json>(it->second.run);
  }

  /// The recorded run named `key`, if this journal has one under the current settings; counted
  /// as reused.
  std::optional<nlohmann::json> find(const std::string& key) const {
    const auto it = runs_.find(key);
    if (it == runs_.end()) {
      return std::nullopt;
    }
    ++reused_;
    if (it->second.seconds >= 0) {
      reused_seconds_ += it->second.seconds;
    } else {
      ++reused_untimed_;
    }
    return it->second.run;
  }

  /// Appends a finished run, with the seconds it took, and flushes it to the file.
  void record(const std::string& key, const nlohmann::json& run, double seconds) {
    runs_[key] = {run, seconds};
    if (path_.empty()) {
      return;
    }
    std::ofstream out(path_, std::ios::app);
    out << nlohmann::json{{"key", key}, {"settings", settings_}, {"run", run}, {"seconds", seconds}}
               .dump()
        << '\n';
    out.flush();
    TORCH_CHECK(out, "cannot append to the run journal '", path_, "'");
  }

  /// Runs recorded under the current settings.
  int64_t size() const { return static_cast<int64_t>(runs_.size()); }
  /// Runs handed out by find() so far.
  int64_t reused() const { return reused_; }
  /// The seconds the reused runs took when they ran, and how many of them have no time recorded.
  double reused_seconds() const { return reused_seconds_; }
  int64_t reused_untimed() const { return reused_untimed_; }
  /// Lines that could not be read (a run cut short while it was written).
  int64_t skipped() const { return skipped_; }

 private:
  std::string path_;
  nlohmann::json settings_;
  struct Entry {
    nlohmann::json run;
    double seconds = -1;  // unknown
  };
  std::map<std::string, Entry> runs_;
  int64_t skipped_ = 0;
  mutable int64_t reused_ = 0, reused_untimed_ = 0;
  mutable double reused_seconds_ = 0;
};

/// The journal at `path` for a command's runs, with what it found said on stdout. `fresh` moves
/// an existing journal aside to PATH.old (nothing is deleted) and starts an empty one.
inline RunJournal open_run_journal(const std::string& path, const nlohmann::json& settings,
                                   bool fresh) {
  if (fresh && std::filesystem::exists(path)) {
    std::filesystem::rename(path, path + ".old");
    fmt::print("      --fresh: moved the journal of earlier runs to {}.old\n", path);
  }
  RunJournal journal(path, settings);
  if (journal.size() > 0) {
    fmt::print("      resuming: {} finished runs recorded in {} are reused (--fresh starts over)\n",
               journal.size(), path);
  }
  if (journal.skipped() > 0) {
    fmt::print("      {} unreadable lines in {} skipped (a run cut short while written)\n",
               journal.skipped(), path);
  }
  return journal;
}

/// How long a resumed command took: `minutes` in this invocation plus the reused runs' own
/// times. Empty when nothing was reused.
inline std::string describe_reused(const RunJournal& journal, double minutes) {
  if (journal.reused() == 0) {
    return "";
  }
  const auto reused_minutes = journal.reused_seconds() / 60.0;
  return fmt::format(
      " here; {} runs came from the journal, which took {:.1f} minutes when they ran{}, so {:.1f} "
      "minutes in all",
      journal.reused(), reused_minutes,
      journal.reused_untimed() > 0
          ? fmt::format(" ({} of them with no time recorded)", journal.reused_untimed())
          : "",
      minutes + reused_minutes);
}

}  // namespace experiments
