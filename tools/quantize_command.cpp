// moeprune quantize: RTN, GPTQ or AWQ weight-only quantisation of every expert of a checkpoint (the
// Unified seed's Expert Slimming, second part), and with --targets of its attention, shared
// experts and dense MLPs. Calibration streams through the model one decoder layer at a time as
// for sparsify; the folder holds the dequantised weights in the checkpoint's own dtype (every
// tool loads it and computes what the quantised model does), or with --format compressed-tensors
// the packed codes and scales transformers (with compressed-tensors) loads, in the layout
// llm-compressor writes for vLLM.
#include <moeprune/models/lm/streamed_quantization.h>

#include <fmt/core.h>
#include <torch/torch.h>

#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "slimming_table.h"

namespace cli {
namespace {

namespace cm = moeprune::compression;

struct QuantizeArgs {
  std::string checkpoint, out, json, method = "gptq", format = "dense";
  TokenSource calibration;
  SlimmingArgs slimming;
  int64_t samples = 8, seq_len = 512, batch_size = 4, bits = 4, group_size = 128;
  bool asymmetric = false, act_order = false, static_groups = false, no_clip = false;
};

int run_quantize(const QuantizeArgs& args) {
  check_new_folder("--out", args.out);
  const auto format = moeprune::lm::parse_quant_format(args.format);
  check_result_path("--json", args.json,
                    {args.checkpoint, args.calibration.path, args.calibration.tokenizer});
  cm::QuantizeOptions options;
  options.method(cm::parse_quant_method(args.method))
      .scheme(
          cm::QuantScheme().bits(args.bits).group_size(args.group_size).symmetric(!args.asymmetric))
      .gptq(cm::GPTQOptions().act_order(args.act_order).static_groups(args.static_groups))
      .awq(cm::AWQOptions().clip(!args.no_clip))
      .calibration(args.slimming.options());
  TORCH_CHECK(options.method() == cm::QuantMethod::kRTN || !args.calibration.path.empty(),
              "--method ", args.method, " needs --calibration (text or token ids)");
  const auto start = std::chrono::steady_clock::now();
  const moeprune::lm::CheckpointLayers model(
      args.checkpoint, moeprune::lm::LoadOptions().dtype(parse_dtype(args.slimming.dtype)));
  torch::Tensor sequences;
  if (!args.calibration.path.empty()) {
    const auto stream = read_token_stream(args.calibration, args.checkpoint);
    sequences = calibration_sequences(stream, args.samples, args.seq_len, args.calibration.path);
    fmt::print("calibration: {} sequences of {} tokens from {}\n", args.samples, args.seq_len,
               args.calibration.path);
  }
  fmt::print("{} {} in {} ({} decoder layers)\n", args.method, options.scheme().describe(),
             options.calibration().targets().describe(), model.num_layers());
  // The zeros column: weights whose code dequantises to 0.
  SlimmingTable table("zeros");
  const auto on_layer = [&](const cm::LayerSparsityReport& r) { table.layer(r); };
  const auto on_linears = [&](const cm::LinearSparsityReport& r) { table.linears(r); };
  LazyBar write_bar("writing", "MB");
  const auto write_progress = write_bar.callback();
  moeprune::hf::WriteOptions wo;
  wo.progress = [&](uint64_t done, uint64_t total) {
    write_progress(static_cast<int64_t>(done >> 20), static_cast<int64_t>(total >> 20));
  };
  const auto result = moeprune::lm::quantize_checkpoint(
      model, sequences, args.out,
      moeprune::lm::QuantizeCheckpointOptions()
          .quantize(options)
          .batch_size(args.batch_size)
          .stream(moeprune::lm::StreamOptions().scratch_dir(args.slimming.scratch_dir))
          .format(format),
      wo, on_layer, on_linears);
  write_bar.finish();
  const double seconds = seconds_since(start);
  fmt::print(
      "wrote {}: {:.1f} MB in {:.1f} s; tensors rewritten {}, copied {}; peak RSS {:.0f} MB\n",
      args.out, result.report.bytes_written / 1e6, seconds, result.report.tensors_merged,
      result.report.tensors_copied, peak_rss_mb());
  if (format == moeprune::lm::QuantFormat::kDense) {
    fmt::print(
        "the weights are stored dequantised in the checkpoint's dtype (what a {}-bit model "
        "computes; the files do not shrink)\n",
        args.bits);
  } else {
    fmt::print(
        "the quantised weights are stored compressed-tensors pack-quantized ({}-bit codes in "
        "int32 words, scales in the checkpoint's dtype), as llm-compressor writes them: "
        "transformers with compressed-tensors loads it\n",
        args.bits);
  }
  if (!args.json.empty()) {
    nlohmann::json j{
        {"checkpoint", args.checkpoint},
        {"out", args.out},
        {"record", nlohmann::json::parse(moeprune::lm::quantization_record(options, format))},
        {"layers", table.layers()},
        {"linears", table.linear_groups()},
        {"bytes_written", result.report.bytes_written},
        {"seconds", seconds},
        {"peak_rss_mb", peak_rss_mb()}};
    if (!args.calibration.path.empty()) {
      j["calibration"] = {
          {"path", args.calibration.path}, {"samples", args.samples}, {"seq_len", args.seq_len}};
    }
    write_file_atomically(args.json, j.dump(1) + "\n");
    fmt::print("per-layer figures written to {}\n", args.json);
  }
  return 0;
}

}  // namespace

Runner add_quantize(CLI::App& app) {
  auto args = std::make_shared<QuantizeArgs>();
  auto* command = app.add_subcommand(
      "quantize",
      "Quantise the experts' weights (RTN, GPTQ or AWQ; 2-8 bits, group-wise), and with --targets "
      "the attention, shared experts and dense MLPs, and write a checkpoint folder: dequantised "
      "weights, or packed (--format compressed-tensors)");
  command->add_option("checkpoint", args->checkpoint, "Checkpoint folder")->required();
  command->add_option("--method", args->method, "gptq, awq or rtn")
      ->check(CLI::IsMember({"gptq", "awq", "rtn"}))
      ->capture_default_str();
  command->add_option("--bits", args->bits, "Bits per weight: 2, 3, 4 or 8")->capture_default_str();
  command
      ->add_option("--group-size", args->group_size,
                   "Inputs per scale (0: one scale per output row)")
      ->capture_default_str();
  command->add_flag("--asymmetric", args->asymmetric, "A zero point per group (default: none)");
  command->add_flag("--act-order", args->act_order, "GPTQ: columns by decreasing Hessian diagonal");
  command->add_flag("--static-groups", args->static_groups,
                    "GPTQ with --act-order: group scales from the original weights");
  command->add_flag("--no-clip", args->no_clip, "AWQ: the input scales alone (no clipping search)");
  add_calibration_options(command, args->calibration, args->samples, args->seq_len,
                          args->batch_size, "for GPTQ's Hessians (not needed for rtn)");
  args->slimming.add_options(command, "quantise");
  command
      ->add_option("--format", args->format,
                   "dense (dequantised weights in the checkpoint's dtype) or compressed-tensors "
                   "(pack-quantized: int32-packed codes with group scales)")
      ->check(CLI::IsMember({"dense", "compressed-tensors"}))
      ->capture_default_str();
  command->add_option("--out", args->out, "Output folder (must not exist)")->required();
  command->add_option("--json", args->json, "Write the per-layer figures to this file");
  return [command, args]() -> int {
    if (!*command) return -1;
    return run_quantize(*args);
  };
}

}  // namespace cli
