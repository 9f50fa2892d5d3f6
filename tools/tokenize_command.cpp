// moeprune tokenize: a text's token ids under a tokenizer.json or tokenizer.model.
#include <fmt/core.h>

#include <fstream>
#include <iterator>
#include <memory>

#include "commands.h"

namespace cli {
namespace {

struct TokenizeArgs {
  std::string tokenizer, text, file, out;
  bool no_special = false, tokens = false;
};

}  // namespace

Runner add_tokenize(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  auto* command = app.add_subcommand("tokenize", "Token ids of a text");
  command
      ->add_option(
          "tokenizer", args->tokenizer,
          "Model folder, or a tokenizer.json or SentencePiece model file (told apart by content)")
      ->required();
  auto* text = command->add_option("--text", args->text, "The text");
  auto* file = command->add_option("--file", args->file, "Or a UTF-8 file");
  text->excludes(file);
  command->add_flag("--no-special", args->no_special,
                    "Do not add the post-processor's special tokens (e.g. a leading <s>)");
  command->add_flag("--tokens", args->tokens, "Also print each id's token");
  command->add_option("--out", args->out,
                      "Write the ids to this file (whitespace-separated, what --calibration and "
                      "eval read as .ids)");
  return [command, args]() -> int {
    if (!*command) return -1;
    std::string content = args->text;
    if (!args->file.empty()) {
      std::ifstream in(args->file, std::ios::binary);
      TORCH_CHECK(in.good(), args->file, ": cannot open");
      content.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    const auto tokenizer = load_tokenizer(args->tokenizer);
    const auto ids = tokenizer.encode(content, !args->no_special);
    fmt::print("{}\n{} tokens for {} bytes\n", tokenizer.describe(), ids.size(), content.size());
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i) {
      std::string item = std::to_string(ids[i]);
      if (args->tokens) item += "=" + tokenizer.id_to_token(ids[i]).value_or("?");
      line += (i ? " " : "") + item;
    }
    fmt::print("{}\n", line);
    if (!args->out.empty()) {
      std::string text;
      for (size_t i = 0; i < ids.size(); ++i) {
        text += std::to_string(ids[i]) + (i % 32 == 31 || i + 1 == ids.size() ? "\n" : " ");
      }
      write_file_atomically(args->out, text);
    }
    const bool round_trip = tokenizer.decode(tokenizer.encode(content, false)) == content;
    fmt::print("decode(encode(text)) {} the text\n", round_trip ? "gives back" : "differs from");
    return 0;
  };
}

}  // namespace cli
