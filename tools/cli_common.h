#pragma once

// What the moeprune commands share: progress bars, peak memory, calibration and evaluation
// tokens from text or id files, atomic output files.
#include <moeprune/io/atomic_write.h>
#include <moeprune/text/tokenizer.h>
#include <moeprune/train/progress_bar.h>

#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace cli {

/// A progress callback (done, total) that opens a bar labelled `label` on first use.
class LazyBar {
 public:
  LazyBar(std::string label, std::string unit) : label_(std::move(label)), unit_(std::move(unit)) {}
  std::function<void(int64_t, int64_t)> callback();
  void finish();

 private:
  std::string label_, unit_;
  std::unique_ptr<moeprune::ProgressBar> bar_;
};

/// This process's peak resident memory in MB (VmHWM; getrusage would include pages a large
/// parent shared before exec).
double peak_rss_mb();

/// Seconds since `start`.
double seconds_since(std::chrono::steady_clock::time_point start);

/// "fp32" / "bf16" -> dtype; refuses anything else.
torch::Dtype parse_dtype(const std::string& name);

/// How a token file is read: "text" (UTF-8, through the tokenizer), "ids" (whitespace-separated
/// integers) or "auto" (ids for a name ending in .ids, text otherwise).
struct TokenSource {
  std::string path;
  std::string format = "auto";
  /// The tokenizer's folder or tokenizer.json / tokenizer.model (default: the checkpoint's).
  std::string tokenizer;
};

/// A tokenizer from a model folder, a tokenizer.json or a tokenizer.model.
moeprune::text::Tokenizer load_tokenizer(const std::string& where);

/// The token stream of `source` [N] int64, text tokenized without special tokens. `checkpoint`
/// is the folder whose tokenizer is used when source.tokenizer is empty. Refuses an empty
/// result; `text_bytes`, when given, receives the text's size (bits per byte).
torch::Tensor read_token_stream(const TokenSource& source, const std::string& checkpoint,
                                int64_t* text_bytes = nullptr);

/// `samples` sequences of `seq_len` tokens cut from the start of `stream`: [samples, seq_len].
/// Refuses a stream that is too short, saying how many tokens it has and needs.
torch::Tensor calibration_sequences(const torch::Tensor& stream, int64_t samples, int64_t seq_len,
                                    const std::string& what);

/// Refuses a result file (`option`'s `path`) that would replace one of the command's inputs: a
/// path inside an input checkpoint folder or equal to an input file (each of `inputs`; empty ones
/// are skipped), or an existing folder. Other existing files are replaced, as a re-run expects.
/// Called before any work, so a refusal writes nothing.
void check_result_path(const std::string& option, const std::string& path,
                       const std::vector<std::string>& inputs);

/// Refuses an output folder `path` (given as `option`) that already exists, before any work
/// (the writers refuse it too, but only after the scoring or merging).
void check_new_folder(const std::string& option, const std::string& path);

/// What a resumable run computes, for its journal (moeprune::lm::StreamJournal): `parts` (the
/// command and its options), the token ids, and each checkpoint folder's files (names, sizes,
/// modification times), hashed (FNV-1a). A change to any of them starts the run over.
std::string run_fingerprint(const std::vector<std::string>& parts, const torch::Tensor& tokens,
                            const std::vector<std::string>& checkpoints);

/// Writes a whole file through a temporary renamed into place (the library's helper).
using moeprune::io::write_file_atomically;

}  // namespace cli
