// Switch Transformers as a whole model against transformers 4.57.6
// (SwitchTransformersForConditionalGeneration, scripts/make_switch_fixtures.py): logits with
// padding and tokens dropped at capacity, the seq2seq loss with its router z and load-balancing
// losses, bf16, cached greedy generation; relative position buckets against hand-computed ones;
// the MoE view over encoder and decoder; checkpoints and training.
#include "../scratch_dir.h"

#include <moeprune/compression/low_rank.h>
#include <moeprune/compression/merging.h>
#include <moeprune/io/safetensors.h>
#include <moeprune/models/seq2seq/checkpoint.h>
#include <moeprune/models/seq2seq/generation.h>
#include <moeprune/models/seq2seq/moe_view.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <string>

using namespace moeprune::seq2seq;
using Catch::Matchers::Contains;

namespace {

const std::string kDir = MOEPRUNE_TEST_FIXTURES "/seq2seq";
const std::string kModel = kDir + "/switch_transformers";

std::map<std::string, torch::Tensor> reference() {
  return moeprune::safetensors::load_file(kDir + "/switch_transformers_reference.safetensors");
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  REQUIRE(a.sizes() == b.sizes());
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

double scalar(const torch::Tensor& t) {
  return t.to(torch::kDouble).reshape({-1})[0].item<double>();
}

Seq2SeqOutput run(SwitchTransformer& model, const std::map<std::string, torch::Tensor>& ref) {
  model->eval();
  torch::NoGradGuard no_grad;
  return model->forward(ref.at("input_ids"), ref.at("attention_mask"), {}, ref.at("labels"));
}

// A copy of the fixture whose config.json `edit` changes.
std::string edited_copy(const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
  const auto dir = test::scratch_dir() + "/" + name;
  REQUIRE(::mkdir(dir.c_str(), 0755) == 0);
  std::ifstream in(kModel + "/config.json");
  auto config = nlohmann::json::parse(in);
  edit(config);
  std::ofstream(dir + "/config.json") << config.dump(2);
  REQUIRE(std::system(("cp " + kModel + "/model.safetensors " + dir).c_str()) == 0);
  return dir;
}

}  // namespace

TEST_CASE("relative position buckets equal hand-computed T5 buckets", "[seq2seq]") {
  // Bidirectional, 32 buckets up to 128: 16 per direction, exact below 8, then
  // 8 + floor(log(d / 8) / log(16) * 8), capped at 15; keys after the query add 16.
  const auto rel =
      torch::tensor({-200, -128, -20, -8, -7, -1, 0, 1, 7, 8, 20, 127, 128, 300}, torch::kLong);
  const auto bi = relative_position_bucket(rel, true, 32, 128);
  const auto want_bi =
      torch::tensor({15, 15, 10, 8, 7, 1, 0, 17, 23, 24, 26, 31, 31, 31}, torch::kLong);
  CHECK(torch::equal(bi, want_bi));
  // Causal: keys after the query share bucket 0; 32 buckets, exact below 16, then
  // 16 + floor(log(d / 16) / log(8) * 16), capped at 31.
  const auto causal_rel = torch::tensor({5, 0, -1, -15, -16, -20, -100, -128, -500}, torch::kLong);
  const auto uni = relative_position_bucket(causal_rel, false, 32, 128);
  const auto want_uni = torch::tensor({0, 0, 1, 15, 16, 17, 30, 31, 31}, torch::kLong);
  CHECK(torch::equal(uni, want_uni));
}

TEST_CASE("switch_transformers logits and losses equal transformers' with padding and drops",
          "[seq2seq]") {
  const auto ref = reference();
  // The fixture exercises the capacity: transformers dropped encoder tokens.
  REQUIRE(ref.at("dropped").item<int64_t>() > 0);
  auto model = load_switch_transformer(kModel);
  CHECK(model->moe_layers().size() == 3);
  const auto out = run(model, ref);
  const double diff = max_diff(out.logits, ref.at("logits"));
  INFO("max |logits - transformers| = " << diff);
  // fp32 through 7 blocks: different summation orders (the expert combine, matmul blocking),
  // a few ulps of values of order 1.
  CHECK(diff < 1e-5);
  const struct {
    const char* name;
    torch::Tensor value;
  } losses[] = {{"loss", out.loss},
                {"lm_loss", out.lm_loss},
                {"encoder_z_loss", out.encoder_losses.z_loss},
                {"encoder_aux_loss", out.encoder_losses.aux_loss},
                {"decoder_z_loss", out.decoder_losses.z_loss},
                {"decoder_aux_loss", out.decoder_losses.aux_loss}};
  for (const auto& l : losses) {
    REQUIRE(l.value.defined());
    const double want = scalar(ref.at(l.name)), got = scalar(l.value);
    INFO(l.name << ": moeprune " << got << ", transformers " << want);
    CHECK(std::abs(got - want) <= 1e-5 * std::max(1.0, std::abs(want)));
  }
}

TEST_CASE("bf16 switch_transformers logits stay within bf16 rounding of transformers'",
          "[seq2seq]") {
  const auto ref = reference();
  auto model = load_switch_transformer(kModel, LoadOptions().dtype(torch::kBFloat16));
  const auto logits = run(model, ref).logits;
  REQUIRE(logits.scalar_type() == torch::kBFloat16);
  const auto want = ref.at("logits_bf16");
  const double scale = want.abs().max().item<double>();
  const double diff = max_diff(logits, want);
  INFO("max |logits - transformers bf16| = " << diff << " (logits up to " << scale << ")");
  // bf16 keeps 8 significant bits (relative step 2^-8); both round after every op in different
  // orders, so allow a few steps of the largest logit (or transformers' own bf16 error against
  // its fp32 model, if larger), and stay near the fp32 model.
  CHECK(diff < std::max(4.0 * scale / 256.0, max_diff(want, ref.at("logits"))));
  CHECK(max_diff(logits, ref.at("logits")) < 8.0 * scale / 256.0);
}

TEST_CASE("greedy generation with the cache equals transformers' generate for 20 tokens",
          "[seq2seq]") {
  const auto ref = reference();
  auto model = load_switch_transformer(kModel);
  const auto tokens =
      greedy_generate(model, ref.at("prompt"), {}, GreedyOptions().max_new_tokens(20));
  INFO("moeprune " << tokens << "\ntransformers " << ref.at("greedy"));
  CHECK(torch::equal(tokens, ref.at("greedy")));
}

TEST_CASE("cached decoding equals the full forward while the decoder's capacity does not bind",
          "[seq2seq]") {
  const auto ref = reference();
  auto model = load_switch_transformer(kModel);
  model->eval();
  torch::NoGradGuard no_grad;
  // Three decoder tokens per sequence cannot exceed an expert capacity of 3, so the full
  // forward drops no decoder token, as one-token cached steps never do.
  REQUIRE(model->options.moe().routing().expert_capacity() >= 3);
  const auto decoder_ids = ref.at("decoder_input_ids").slice(1, 0, 3);
  const auto& ids = ref.at("input_ids");
  const auto& mask = ref.at("attention_mask");
  const auto full = model->logits(model->decode(decoder_ids, model->encode(ids, mask), mask));
  auto cache = model->start_cache(ids, mask);
  std::vector<torch::Tensor> steps;
  for (int64_t t = 0; t < 3; ++t) {
    steps.push_back(model->logits(model->decode(decoder_ids.slice(1, t, t + 1), {}, {}, &cache)));
  }
  CHECK(cache.length == 3);
  const double diff = max_diff(torch::cat(steps, 1), full);
  INFO("max |cached - full| = " << diff);
  CHECK(diff < 1e-5);
  // Beyond that capacity, the two differ by design: with more decoder tokens than an expert may
  // take, the full forward drops some (transformers' generate also routes one token per step).
}

TEST_CASE("the MoE view lists encoder and decoder MoE layers and M-SMoE merges both", "[seq2seq]") {
  const auto ref = reference();
  auto model = load_switch_transformer(kModel);
  auto view = moe_view(model, [&](const auto& visit) {
    visit(Seq2SeqBatch{ref.at("input_ids"), ref.at("attention_mask"), ref.at("decoder_input_ids")});
  });
  const auto layers = view->layers();
  REQUIRE(layers.size() == 3);
  CHECK(layers[0].name == "encoder.block.1.layer.1.mlp");
  CHECK(layers[1].name == "encoder.block.3.layer.1.mlp");
  CHECK(layers[2].name == "decoder.block.1.layer.2.mlp");
  CHECK(layers[2].key == 2);

  namespace c = moeprune::compression;
  const auto usage = c::collect_expert_usage(*view);
  // Each layer's usage counts its own calibration tokens: 24 encoder, 16 decoder, top-1.
  REQUIRE(usage.router_logits.size() == 3);
  CHECK(usage.router_logits.at(0).size(0) == 24);
  CHECK(usage.router_logits.at(2).size(0) == 16);
  const auto groups = c::group_experts(*view, usage, c::same_group_count(*view, 3));
  c::merge_experts(*view, groups, usage);
  for (const auto& entry : layers) {
    CHECK(entry.layer->experts()->num_held() == 3);
  }
  const auto out = run(model, ref);
  CHECK(out.logits.isfinite().all().item<bool>());
}

TEST_CASE("switch checkpoints round-trip and saved merged models reload to the same logits",
          "[seq2seq]") {
  const auto ref = reference();
  auto model = load_switch_transformer(kModel);
  const auto before = run(model, ref).logits;
  const auto dir = test::scratch_dir() + "/switch_saved";
  save_switch_transformer(model, dir);
  auto again = load_switch_transformer(dir);
  CHECK(torch::equal(run(again, ref).logits, before));
  REQUIRE_THROWS_WITH(save_switch_transformer(model, dir), Contains("already exists"));

  // Merged: every original expert is written with its group's weights, so the plain reloaded
  // model computes what the merged one does.
  auto view = moe_view(model, [&](const auto& visit) {
    visit(Seq2SeqBatch{ref.at("input_ids"), ref.at("attention_mask"), ref.at("decoder_input_ids")});
  });
  namespace c = moeprune::compression;
  const auto usage = c::collect_expert_usage(*view);
  c::merge_experts(*view, c::group_experts(*view, usage, c::same_group_count(*view, 2)), usage);
  const auto merged = run(model, ref).logits;
  save_switch_transformer(model, dir, SaveOptions().overwrite(true));
  auto reloaded = load_switch_transformer(dir);
  const double diff = max_diff(run(reloaded, ref).logits, merged);
  INFO("max |reloaded - merged| = " << diff);
  // The same weights, batched differently (a merged expert's rows go through one GEMM, the
  // reloaded copies through one each): fp32 rounding of values of order 1.
  CHECK(diff < 1e-5);
}

TEST_CASE("config.json values the model does not implement are refused by name", "[seq2seq]") {
  const auto gated = edited_copy("gated", [](auto& c) { c["is_gated_act"] = true; });
  CHECK_THROWS_WITH(load_switch_transformer(gated), Contains("is_gated_act"));
  const auto other = edited_copy("t5", [](auto& c) { c["model_type"] = "t5"; });
  CHECK_THROWS_WITH(load_switch_transformer(other), Contains("model_type") && Contains("t5"));
  const auto bias = edited_copy("router_bias", [](auto& c) { c["router_bias"] = true; });
  CHECK_THROWS_WITH(load_switch_transformer(bias), Contains("router_bias"));
  const auto bf16_router =
      edited_copy("router_dtype", [](auto& c) { c["router_dtype"] = "bfloat16"; });
  CHECK_THROWS_WITH(load_switch_transformer(bf16_router), Contains("router_dtype"));
  // A block count that disagrees with the tensors: the missing block's tensors are named.
  const auto deeper = edited_copy("deeper", [](auto& c) { c["num_layers"] = 5; });
  CHECK_THROWS_WITH(load_switch_transformer(deeper), Contains("encoder.block.4"));
}

TEST_CASE("switch_transformers trains: the loss falls and routers and experts get gradients",
          "[seq2seq]") {
  const auto ref = reference();
  auto model = load_switch_transformer(kModel);
  model->train();
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(3e-3));
  torch::manual_seed(0);
  double first = 0.0, last = 0.0;
  for (int step = 0; step < 25; ++step) {
    optimizer.zero_grad();
    const auto out =
        model->forward(ref.at("input_ids"), ref.at("attention_mask"), {}, ref.at("labels"));
    out.loss.backward();
    if (step == 0) {
      first = out.loss.item<double>();
      const auto layer = model->moe_layers().front().second;  // a copy: the vector is a temporary
      CHECK(layer->router().router_weight().grad().abs().sum().item<double>() > 0.0);
      CHECK(layer->experts()->w1.grad().abs().sum().item<double>() > 0.0);
    }
    last = out.loss.item<double>();
    optimizer.step();
  }
  INFO("loss " << first << " -> " << last);
  CHECK(last < 0.8 * first);
}

TEST_CASE("saving removed experts writes zeros that compute the same, other states are refused",
          "[seq2seq]") {
  const auto ref = reference();
  auto model = load_switch_transformer(kModel);
  // Experts 1 and 4 of the first MoE layer removed, its router kept: their slots output zero,
  // as zero ReLU experts do in the saved checkpoint (and in transformers).
  model->moe_layers().front().second->keep_experts({0, 2, 3, 5});
  const auto pruned = run(model, ref).logits;
  const auto dir = test::scratch_dir() + "/switch_removed";
  save_switch_transformer(model, dir);
  auto reloaded = load_switch_transformer(dir);
  CHECK(max_diff(run(reloaded, ref).logits, pruned) < 1e-6);

  auto cut = load_switch_transformer(kModel);
  cut->moe_layers().back().second->keep_experts({0, 1, 2, 3}, /*drop_router_columns=*/true);
  CHECK_THROWS_WITH(save_switch_transformer(cut, test::scratch_dir() + "/switch_cut_refused"),
                    Contains("decoder.block.1.layer.2.mlp") && Contains("router columns"));
  auto factorised = load_switch_transformer(kModel);
  moeprune::compression::factorize_experts(*moe_view(factorised), 2);
  CHECK_THROWS_WITH(save_switch_transformer(factorised, test::scratch_dir() + "/switch_lr_refused"),
                    Contains("factorised"));
  CHECK_FALSE(test::path_exists(test::scratch_dir() + "/switch_cut_refused"));
  CHECK_FALSE(test::path_exists(test::scratch_dir() + "/switch_lr_refused"));
}
