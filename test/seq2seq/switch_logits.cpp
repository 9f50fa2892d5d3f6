// Test helper: loads a Switch Transformers folder, optionally merges its experts (M-SMoE, GROUPS
// per MoE layer, the reference inputs as calibration) and saves it to SAVE_DIR, then writes the
// logits of the reference inputs (input_ids, attention_mask, decoder_input_ids) to OUT.
//   switch_logits MODEL_DIR REFERENCE OUT [SAVE_DIR GROUPS]
#include <moeprune/compression/merging.h>
#include <moeprune/io/safetensors.h>
#include <moeprune/models/seq2seq/checkpoint.h>
#include <moeprune/models/seq2seq/moe_view.h>

#include <torch/torch.h>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  if (argc != 4 && argc != 6) {
    std::fprintf(stderr, "usage: switch_logits MODEL_DIR REFERENCE OUT [SAVE_DIR GROUPS]\n");
    return 2;
  }
  try {
    namespace s2s = moeprune::seq2seq;
    namespace c = moeprune::compression;
    auto model = s2s::load_switch_transformer(argv[1]);
    const auto ref = moeprune::safetensors::load_file(argv[2]);
    const s2s::Seq2SeqBatch batch{ref.at("input_ids"), ref.at("attention_mask"),
                                  ref.at("decoder_input_ids")};
    if (argc == 6) {
      auto view = s2s::moe_view(model, [&](const auto& visit) { visit(batch); });
      const auto usage = c::collect_expert_usage(*view);
      c::merge_experts(
          *view, c::group_experts(*view, usage, c::same_group_count(*view, std::stoll(argv[5]))),
          usage);
      s2s::save_switch_transformer(model, argv[4]);
    }
    model->eval();
    torch::NoGradGuard no_grad;
    const auto out = model->forward(batch.input_ids, batch.attention_mask, batch.decoder_input_ids);
    moeprune::safetensors::save_file(argv[3], {{"input_ids", batch.input_ids},
                                               {"attention_mask", batch.attention_mask},
                                               {"decoder_input_ids", batch.decoder_input_ids},
                                               {"logits", out.logits.contiguous()}});
  } catch (const std::exception& e) {
    std::fprintf(stderr, "switch_logits: %s\n", e.what());
    return 1;
  }
  return 0;
}
