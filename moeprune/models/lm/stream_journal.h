#pragma once

// Resumable layer-streamed runs. A streamed score or evaluation of a large checkpoint runs for
// tens of minutes, one decoder layer at a time; after each layer the journal saves the
// activations and the caller's state (scores of the MoE layers done, as text), so a run killed at
// any point and started again with the same arguments continues after the last saved layer and
// gives byte-identical results (the activations come back bit for bit).
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace moeprune::lm {

class StreamJournal {
 public:
  /// Opens the journal folder `dir`, creating it when missing. `fingerprint` says what the run
  /// computes (checkpoint, inputs, options): a journal written with another fingerprint is
  /// refused, naming the folder, so a changed run never resumes from a stale one.
  StreamJournal(std::string dir, std::string fingerprint);

  const std::string& directory() const { return dir_; }
  /// Decoder layers whose outputs are saved (0 for a new run).
  int64_t layers_done() const { return layers_done_; }
  /// The caller's state saved with them.
  const std::string& state() const { return state_; }
  /// The saved hidden states, one per batch, in the order they were saved.
  std::vector<torch::Tensor> activations() const;

  /// Saves the hidden states after `layers_done` decoder layers and the caller's state:
  /// activations to a new file, then the journal entry naming it (the commit point), then the
  /// older activations are removed. Each file goes through a temporary renamed into place.
  void save(int64_t layers_done, const std::vector<torch::Tensor>& activations,
            const std::string& state);
  /// Removes the journal (after the run's output is written).
  void remove();

  /// For tests of resumption: MOEPRUNE_JOURNAL_KILL_AFTER=N makes save() kill the process
  /// (SIGKILL, as a crash) right after saving N layers.
  static int64_t kill_after_from_environment();

 private:
  std::string dir_, fingerprint_, state_;
  int64_t layers_done_ = 0;
  int64_t kill_after_ = -1;
};

}  // namespace moeprune::lm
