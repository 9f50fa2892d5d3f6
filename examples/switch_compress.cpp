// MC-SMoE's pipeline (Li et al., ICLR 2024, "Merge, Then Compress"; UNITES-Lab/MC-SMoE) on a
// Switch Transformers model and a seq2seq task built from packaged text: T5 span corruption over
// Debian's fortunes. Stages, each evaluated on held-out fortunes (loss and target-token accuracy,
// teacher forced) with the experts' stored parameters:
//   1. the model: a Switch checkpoint (--checkpoint; its tokenizer.json or spiece.model and
//      <extra_id_i> sentinels), or a small one pre-trained here on byte tokens, saved in Hugging
//      Face format under OUT/pretrained;
//   2. M-SMoE: expert usage on calibration batches, experts grouped around the most used ones by
//      router-logit similarity, members permutation-aligned to their dominant expert and merged
//      weighted by usage, in the encoder and the decoder;
//   3. knowledge distillation from the unmerged model, routers frozen;
//   4. MC-SMoE: every merged expert as low rank + sparse, distilled again while the sparse parts
//      are pruned (PLATON importance, cubic schedule) to the final density;
//   5. the reference: the uncompressed model trained for as many more steps.
// Results: a table on stdout and OUT/results.json.
//   switch_compress [--checkpoint DIR] [--out DIR] [--language en] [--pretrain-steps 1000]
//                   [--groups 4] [--kd-steps 150] [--rank 8] [--final-density 0.1]
//                   [--compress-steps 150]
#include <moeprune/compression/low_rank.h>
#include <moeprune/compression/merging.h>
#include <moeprune/io/atomic_write.h>
#include <moeprune/models/seq2seq/checkpoint.h>
#include <moeprune/models/seq2seq/moe_view.h>
#include <moeprune/text/tokenizer.h>
#include <moeprune/train/optimization.h>
#include <moeprune/train/span_corruption.h>
#include <moeprune/train/text_corpus.h>

#include <fmt/format.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

using moeprune::seq2seq::SwitchTransformer;
namespace data = moeprune::data;
namespace seq2seq = moeprune::seq2seq;
namespace compression = moeprune::compression;

// Byte tokens for the model pre-trained here: 0 pad, 1 eos, 2 unused, 3-258 the bytes, and
// kSentinels sentinels at the top of the vocabulary (T5's layout: <extra_id_i> = vocab - 1 - i).
constexpr int64_t kByteOffset = 3;
constexpr int64_t kSentinels = 32;
constexpr int64_t kByteVocab = kByteOffset + 256 + kSentinels;

struct Task {
  std::vector<std::vector<int64_t>> train, validation;
  std::function<int64_t(int64_t)> sentinel;
  int64_t eos = 1;
};

Task make_task(const std::string& language, const std::optional<moeprune::text::Tokenizer>& tok,
               int64_t max_tokens) {
  const auto splits = data::load_fortunes(language);
  Task task;
  if (tok.has_value()) {
    const auto first = tok->token_to_id("<extra_id_0>");
    TORCH_CHECK(first.has_value(),
                "switch_compress: the checkpoint's tokenizer has no <extra_id_0> sentinel");
    task.sentinel = [tok](int64_t i) {
      const auto id = tok->token_to_id("<extra_id_" + std::to_string(i) + ">");
      TORCH_CHECK(id.has_value(), "switch_compress: the tokenizer has no <extra_id_", i, ">");
      return *id;
    };
    task.eos = tok->token_to_id("</s>").value_or(1);
  } else {
    task.sentinel = [](int64_t i) {
      TORCH_CHECK(i < kSentinels, "switch_compress: more than ", kSentinels, " spans");
      return kByteVocab - 1 - i;
    };
  }
  const auto encode = [&](const std::string& text) {
    std::vector<int64_t> ids;
    if (tok.has_value()) {
      ids = tok->encode(text, /*add_special_tokens=*/false);
    } else {
      for (const unsigned char c : text) {
        ids.push_back(kByteOffset + c);
      }
    }
    if (static_cast<int64_t>(ids.size()) > max_tokens) {
      ids.resize(static_cast<size_t>(max_tokens));
    }
    return ids;
  };
  for (const auto& [docs, out] :
       {std::pair{&splits.train, &task.train}, std::pair{&splits.validation, &task.validation}}) {
    for (const auto& doc : *docs) {
      auto ids = encode(doc);
      if (ids.size() >= 8) {
        out->push_back(std::move(ids));
      }
    }
  }
  TORCH_CHECK(!task.train.empty() && !task.validation.empty(),
              "switch_compress: no fortunes of language '", language, "'");
  return task;
}

// Batch `index` of a set: documents index * size ... (wrapping), corrupted with a seed of its
// own, so every stage sees the same validation batches.
data::Seq2SeqTensors batch_of(const Task& task, const std::vector<std::vector<int64_t>>& docs,
                              int64_t index, int64_t size, uint64_t seed, int64_t pad) {
  std::mt19937_64 rng(seed * 1000003ULL + static_cast<uint64_t>(index));
  data::SpanCorruptionOptions options;
  options.sentinel(task.sentinel).eos_token_id(task.eos);
  std::vector<data::SpanCorruptionExample> examples;
  for (int64_t i = 0; i < size; ++i) {
    const auto& doc =
        docs[static_cast<size_t>((index * size + i) % static_cast<int64_t>(docs.size()))];
    examples.push_back(data::span_corrupt(doc, options, rng));
  }
  return data::collate(examples, pad);
}

struct Evaluation {
  double loss = 0.0, accuracy = 0.0;
};

Evaluation evaluate(SwitchTransformer& model, const Task& task, int64_t batches, int64_t size) {
  model->eval();
  torch::NoGradGuard no_grad;
  double loss = 0.0, correct = 0.0, total = 0.0;
  for (int64_t b = 0; b < batches; ++b) {
    const auto t = batch_of(task, task.validation, b, size, 7, model->options.pad_token_id());
    const auto out = model->forward(t.input_ids, t.attention_mask, {}, t.labels);
    const auto scored = t.labels.ne(-100);
    const auto n = scored.sum().item<double>();
    loss += out.lm_loss.item<double>() * n;
    correct += (out.logits.argmax(-1).eq(t.labels) & scored).sum().item<double>();
    total += n;
  }
  return {loss / total, correct / total};
}

int64_t expert_parameters(const SwitchTransformer& model) {
  int64_t n = 0;
  for (const auto& [name, layer] : model->moe_layers()) {
    n +=
        layer->experts()->num_parameters(/*stored=*/true) + layer->router().router_weight().numel();
  }
  return n;
}

// Trains `model` for `steps` on span corruption with the library's optimisation step (AdamW at a
// constant `lr`, no clipping; a non-finite loss is refused before it reaches the weights): the
// seq2seq loss (with its router losses) plus, with a teacher, 0.2 KL(softmax(teacher / T) ||
// softmax(student / T)) at T = 2 per target token, averaged over the target tokens, without a T^2
// factor (MC-SMoE's KLDivLoss with reduction "batchmean": distillation_kl, as the vision and
// language trainers distil).
void train(SwitchTransformer& model, const Task& task, int64_t steps, int64_t size, double lr,
           uint64_t seed, SwitchTransformer* teacher, const std::string& what,
           compression::SparsePruner* pruner = nullptr) {
  std::vector<torch::Tensor> params;
  for (auto& p : model->parameters()) {
    if (p.requires_grad()) {
      params.push_back(p);
    }
  }
  constexpr double kTemperature = 2.0, kDistillWeight = 0.2;
  auto options = moeprune::TrainingOptions().lr(lr);
  if (pruner != nullptr) {
    options.after_backward([pruner](int64_t s, int64_t n) { pruner->after_backward(s, n); })
        .after_step([pruner](int64_t s, int64_t n) { pruner->after_step(s, n); });
  }
  const auto optimizer = moeprune::make_optimizer(params, options);
  std::vector<std::pair<int64_t, moeprune::MoELayer>> moe_layers;
  for (const auto& [name, layer] : model->moe_layers()) moe_layers.emplace_back(0, layer);
  moeprune::OptimizationStep optimize(*optimizer, params, moe_layers, options, steps,
                                      "switch_compress " + what);
  const auto start = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < steps; ++step) {
    model->train();
    const auto t = batch_of(task, task.train, step, size, seed, model->options.pad_token_id());
    const auto out = model->forward(t.input_ids, t.attention_mask, {}, t.labels);
    auto loss = out.loss;
    if (teacher != nullptr) {
      torch::Tensor target;
      {
        torch::NoGradGuard no_grad;
        (*teacher)->eval();
        target = (*teacher)->forward(t.input_ids, t.attention_mask, {}, t.labels).logits;
      }
      // The target tokens only (labels -100 are padding).
      const auto scored = t.labels.reshape({-1}).ne(-100).nonzero().squeeze(1);
      const auto rows = [&](const torch::Tensor& logits) {
        return logits.to(torch::kFloat).reshape({-1, logits.size(-1)}).index_select(0, scored);
      };
      loss = loss + kDistillWeight *
                        moeprune::distillation_kl(rows(out.logits), rows(target), kTemperature);
    }
    const double value = optimize.apply(step, loss)[0];
    if ((step + 1) % std::max<int64_t>(1, steps / 10) == 0 || step + 1 == steps) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      fmt::print("  {} step {}/{}: loss {:.4f}{} ({:.1f} s)\n", what, step + 1, steps, value,
                 pruner != nullptr ? fmt::format(", sparse density {:.2f}", pruner->density()) : "",
                 seconds);
      std::fflush(stdout);
    }
  }
  model->eval();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"MC-SMoE (merge, then compress) on a Switch Transformers model"};
  std::string checkpoint, out_dir = "switch_compress_out", language = "en";
  int64_t pretrain_steps = 1000, d_model = 128, experts = 8, layers = 4, groups = 0, kd_steps = 150,
          rank = 8, compress_steps = 150, batch = 16, max_tokens = 192, eval_batches = 8,
          calibration_batches = 4, threads = 0;
  double lr = 1e-3, kd_lr = 3e-4, final_density = 0.1;
  uint64_t seed = 0;
  app.add_option("--checkpoint", checkpoint,
                 "Switch Transformers checkpoint folder (default: pre-train a small one)");
  app.add_option("--out", out_dir, "folder for the pre-trained model and results.json");
  app.add_option("--language", language, "fortunes language: en, de, es, it, pt");
  app.add_option("--pretrain-steps", pretrain_steps, "steps of pre-training without --checkpoint")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--d-model", d_model, "width of the pre-trained model")
      ->check(CLI::PositiveNumber);
  app.add_option("--experts", experts, "experts per MoE layer of the pre-trained model")
      ->check(CLI::Range(2, 256));
  app.add_option("--layers", layers, "encoder and decoder blocks of the pre-trained model")
      ->check(CLI::Range(2, 48));
  app.add_option("--groups", groups, "merged experts per MoE layer (default: half)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--kd-steps", kd_steps, "distillation steps after merging")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--rank", rank, "rank of the low-rank parts")->check(CLI::PositiveNumber);
  app.add_option("--final-density", final_density, "sparse parts' final density")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--compress-steps", compress_steps, "distillation steps while pruning S")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--batch", batch, "sequences per batch")->check(CLI::PositiveNumber);
  app.add_option("--max-tokens", max_tokens, "tokens kept of each fortune")
      ->check(CLI::Range(8, 4096));
  app.add_option("--eval-batches", eval_batches, "validation batches per evaluation")
      ->check(CLI::PositiveNumber);
  app.add_option("--lr", lr, "pre-training learning rate");
  app.add_option("--kd-lr", kd_lr, "distillation learning rate");
  app.add_option("--seed", seed, "seed of the initialisation and the corruption");
  app.add_option("--threads", threads, "CPU threads (0: torch's default)");
  CLI11_PARSE(app, argc, argv);
  if (threads > 0) {
    torch::set_num_threads(static_cast<int>(threads));
  }
  torch::manual_seed(seed);
  try {
    std::filesystem::create_directories(out_dir);
    std::optional<moeprune::text::Tokenizer> tokenizer;
    SwitchTransformer model{nullptr};
    if (!checkpoint.empty()) {
      model = seq2seq::load_switch_transformer(checkpoint);
      tokenizer = moeprune::text::Tokenizer::from_folder(checkpoint);
    } else {
      seq2seq::SwitchTransformerOptions o;
      o.vocab_size(kByteVocab)
          .d_model(d_model)
          .d_kv(d_model / 4)
          .d_ff(2 * d_model)
          .num_heads(4)
          .num_layers(layers)
          .num_decoder_layers(layers)
          .dropout_rate(0.0);
      auto moe = moeprune::MoELayerOptions::preset("switch", d_model, 2 * d_model, experts);
      // Capacity factor ~1.25 of a fortune's tokens spread over the experts.
      moe.routing().expert_capacity(std::max<int64_t>(4, (max_tokens * 5 / 4) / experts + 1));
      o.moe(moe);
      model = SwitchTransformer(o);
    }
    const auto task = make_task(language, tokenizer, max_tokens);
    std::ostringstream summary;
    model->pretty_print(summary);
    fmt::print("{}\n{} training and {} validation fortunes ({})\n", summary.str(),
               task.train.size(), task.validation.size(), language);
    if (checkpoint.empty() && pretrain_steps > 0) {
      train(model, task, pretrain_steps, batch, lr, seed, nullptr, "pre-training");
      seq2seq::save_switch_transformer(model, out_dir + "/pretrained",
                                       seq2seq::SaveOptions().overwrite(true));
      fmt::print("saved {}/pretrained (transformers loads it)\n", out_dir);
    }

    nlohmann::ordered_json results = nlohmann::ordered_json::array();
    fmt::print("\n{:<28} {:>10} {:>10} {:>14}\n", "stage", "val loss", "accuracy", "expert params");
    const auto report = [&](const std::string& stage) {
      const auto e = evaluate(model, task, eval_batches, batch);
      const auto params = expert_parameters(model);
      fmt::print("{:<28} {:>10.4f} {:>10.4f} {:>14}\n", stage, e.loss, e.accuracy, params);
      std::fflush(stdout);
      results.push_back({{"stage", stage},
                         {"validation_loss", e.loss},
                         {"token_accuracy", e.accuracy},
                         {"expert_parameters", params}});
    };
    report("model");

    // The teacher: a copy of the unmerged model.
    auto teacher = SwitchTransformer(
        std::dynamic_pointer_cast<seq2seq::SwitchTransformerImpl>(model->clone()));
    auto view = seq2seq::moe_view(model, [&](const auto& visit) {
      for (int64_t b = 0; b < calibration_batches; ++b) {
        const auto t =
            batch_of(task, task.train, b, batch, seed + 1, model->options.pad_token_id());
        visit(seq2seq::Seq2SeqBatch{t.input_ids, t.attention_mask, model->shift_right(t.labels)});
      }
    });
    const auto usage = compression::collect_expert_usage(*view);
    const int64_t count =
        groups > 0 ? groups : std::max<int64_t>(1, model->options.moe().num_experts() / 2);
    const auto merge_groups =
        compression::group_experts(*view, usage, compression::same_group_count(*view, count));
    fmt::print("\nM-SMoE groups (dominant expert first):\n{}\n",
               compression::format_groups(merge_groups, usage));
    compression::merge_experts(*view, merge_groups, usage, /*align=*/true);
    report("M-SMoE merged");

    for (const auto& [name, layer] : model->moe_layers()) {
      layer->router().router_weight().set_requires_grad(false);
    }
    train(model, task, kd_steps, batch, kd_lr, seed + 2, &teacher, "distillation");
    report("M-SMoE + KD");

    compression::factorize_experts(*view, rank);
    report(fmt::format("low rank {} + dense S", rank));
    compression::SparsePruner pruner(*view,
                                     compression::SparsePruningOptions()
                                         .final_density(final_density)
                                         .warmup_steps(std::max<int64_t>(1, compress_steps / 8)));
    train(model, task, compress_steps, batch, kd_lr, seed + 3, &teacher, "compression", &pruner);
    pruner.prune_to(final_density);
    report(fmt::format("MC-SMoE (S density {:.2f})", pruner.density()));

    // The fair reference: the uncompressed model trained as many more steps as the compressed
    // one was distilled (a small pre-trained model still improves with training alone).
    auto baseline = SwitchTransformer(
        std::dynamic_pointer_cast<seq2seq::SwitchTransformerImpl>(teacher->clone()));
    std::swap(model, baseline);
    train(model, task, kd_steps + compress_steps, batch, kd_lr, seed + 2, nullptr, "uncompressed");
    report(fmt::format("uncompressed, +{} steps", kd_steps + compress_steps));
    std::swap(model, baseline);

    moeprune::io::write_file_atomically(out_dir + "/results.json", results.dump(2) + "\n");
    fmt::print("\nwrote {}/results.json\n", out_dir);
  } catch (const std::exception& e) {
    fmt::print(stderr, "switch_compress: {}\n", e.what());
    return 1;
  }
  return 0;
}
