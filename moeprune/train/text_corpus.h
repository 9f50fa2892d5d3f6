#pragma once

// Text for byte-level language models: the fortune cookies Debian ships in several languages,
// split deterministically into training, validation and test sets by position in each file, as
// byte tokens (ids 0-255, plus an end-of-text id after every fortune), so no tokenizer is needed.
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace moeprune::data {

/// Where Debian's fortune packages put their files.
inline constexpr const char* kFortuneDir = "/usr/share/games/fortunes";

/// Byte-level vocabulary: ids 0-255 are the bytes of the UTF-8 text, kEndOfText ends each
/// document (a fortune). kByteVocabSize ids in all.
inline constexpr int64_t kEndOfText = 256;
inline constexpr int64_t kByteVocabSize = 257;

/// One language's fortunes: its code, its name and the Debian package that ships it.
struct FortuneLanguage {
  std::string code, name, package;
};

/// The languages load_fortunes knows: en (fortunes), de (fortunes-de), es (fortunes-es), it
/// (fortunes-it), pt (fortunes-br, Brazilian Portuguese).
const std::vector<FortuneLanguage>& fortune_languages();

/// The files holding language `code`'s fortunes under `root`, sorted by name: en is the fixed
/// list of the fortunes package's files (other packages put files beside them); de, es and it
/// are every fortune file of their folder (not the .dat indexes, .u8 links or sub-folders such as
/// the offensive es/off); pt is "brasil". Refuses an unknown code, and a language none of whose
/// files are there, naming the package to install.
std::vector<std::string> fortune_files(const std::string& code,
                                       const std::string& root = kFortuneDir);

/// The fortunes of one file in the strfile format: entries separated by lines holding only "%";
/// the newline before each separator ends the entry and is kept; empty entries are skipped.
/// Bytes are kept as they are (some English files use backspace overstriking).
std::vector<std::string> read_fortunes(const std::string& path);

/// Documents split into the three sets.
struct TextSplits {
  std::vector<std::string> train, validation, test;
};

/// Splits each file's fortunes by position: of a file's n fortunes the last floor(n * test) go
/// to the test set, the floor(n * validation) before them to validation, the rest (the first
/// ones) to training; sets keep file order, files their sorted order. Deterministic: no shuffling,
/// so the sets are the same on every machine with the same package versions.
TextSplits split_by_position(const std::vector<std::vector<std::string>>& files,
                             double validation = 0.1, double test = 0.1);

/// The fortunes of language `code` under `root`, split by split_by_position.
TextSplits load_fortunes(const std::string& code, const std::string& root = kFortuneDir,
                         double validation = 0.1, double test = 0.1);

/// A token stream [N] int64: each document's bytes (0-255) followed by kEndOfText.
torch::Tensor byte_tokens(const std::vector<std::string>& documents);

/// Bits per byte from a summed negative log-likelihood (nats) over the tokens of `scored` (the
/// tokens a perplexity run predicted, [N]): the bits of every predicted token, end-of-text marks
/// included (the model has to predict where a fortune ends), over the number of bytes among
/// them. Refuses a stream with no byte tokens.
double bits_per_byte(double nll_sum, const torch::Tensor& scored);

}  // namespace moeprune::data
