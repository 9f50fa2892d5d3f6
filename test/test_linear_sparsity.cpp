// Sparsity beyond the experts (compression/model_sparsity.h, linear_sparsity.h): the capture of
// dense linear layers' inputs against inputs computed by hand from the model's parts, Wanda's
// masks against wanda_mask on those inputs, SparseGPT against sparsegpt on their Gram matrix,
// and the refusals.
#include "compression_helpers.h"

#include <moeprune/compression/expert_quantization.h>
#include <moeprune/compression/model_sparsity.h>
#include <moeprune/compression/weight_sparsity.h>
#include <moeprune/layers/linear_capture.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace linear_sparsity_test {

namespace cm = moeprune::compression;

TEST_CASE("the linear capture sees each layer's input once, in every form LinearImpl calls") {
  torch::manual_seed(1);
  torch::nn::Linear a(4, 3), b(torch::nn::LinearOptions(3, 2).bias(false)), other(4, 3);
  std::vector<std::pair<size_t, torch::Tensor>> seen;
  const auto x2 = torch::randn({5, 4}), x3 = torch::randn({2, 5, 4});
  {
    moeprune::LinearInputCapture capture(
        {a, b}, [&](size_t i, const torch::Tensor& x) { seen.emplace_back(i, x.clone()); });
    torch::NoGradGuard no_grad;
    b(torch::relu(a(x2)));               // addmm, then matmul without a bias
    other(x2);                           // not captured
    at::linear(x3, a->weight, a->bias);  // once, not again for its matmul
    c10::InferenceMode inference;
    b(a(x3));
    CHECK(capture.calls() == std::vector<int64_t>{3, 2});
  }
  b(a(x2));  // after the capture: nothing
  REQUIRE(seen.size() == 5);
  const auto h2 = torch::relu(x2.mm(a->weight.t()) + a->bias).detach();
  const auto h3 = (x3.matmul(a->weight.t()) + a->bias).detach();
  const std::vector<std::pair<size_t, torch::Tensor>> expected{{0, x2},
                                                               {1, h2},
                                                               {0, x3.reshape({10, 4})},
                                                               {0, x3.reshape({10, 4})},
                                                               {1, h3.reshape({10, 3})}};
  for (size_t k = 0; k < expected.size(); ++k) {
    INFO("call " << k);
    CHECK(seen[k].first == expected[k].first);
    CHECK(torch::allclose(seen[k].second, expected[k].second, 1e-6, 1e-6));
  }
}

TEST_CASE("the linear capture keeps the visitor's exception and refuses a second capture") {
  torch::nn::Linear a(4, 3);
  moeprune::LinearInputCapture capture(
      {a}, [](size_t, const torch::Tensor&) { throw std::runtime_error("visitor failed"); });
  a(torch::randn({2, 4}));
  CHECK_THROWS_WITH(capture.rethrow_if_failed(), "visitor failed");
  CHECK_THROWS_WITH(moeprune::LinearInputCapture({a}, [](size_t, const torch::Tensor&) {}),
                    Catch::Contains("another capture is running"));
}

// The inputs of each dense linear layer of `m` on `images`, from the model's parts.
std::map<std::string, torch::Tensor> hand_inputs(moeprune::VisionTransformer& m,
                                                 const torch::Tensor& images) {
  torch::NoGradGuard no_grad;
  m->eval();
  m->capture_block_states = true;
  const auto out = m->forward(images);
  m->capture_block_states = false;
  std::map<std::string, torch::Tensor> inputs;
  for (size_t i = 0; i < m->blocks.size(); ++i) {
    auto& block = m->blocks[i];
    const auto name = "block" + std::to_string(i) + ".";
    const auto x = out.block_states[i];
    const int64_t B = x.size(0), N = x.size(1), d = x.size(2), H = block->heads, dh = d / H;
    const auto tokens = block->ln1(x);
    inputs[name + "qkv"] = tokens.reshape({-1, d});
    // Attention written out: softmax(q k^T / sqrt(dh)) v per head.
    const auto qkv = block->qkv(tokens).view({B, N, 3, H, dh}).permute({2, 0, 3, 1, 4});
    const auto weights =
        (qkv[0].matmul(qkv[1].transpose(-1, -2)) / std::sqrt(double(dh))).softmax(-1);
    inputs[name + "proj"] = weights.matmul(qkv[2]).transpose(1, 2).reshape({-1, d});
    if (!block->is_moe()) {
      const auto mid = block->ln2(out.mlp_states[i]).reshape({-1, d});
      inputs[name + "fc1"] = mid;
      inputs[name + "fc2"] = torch::gelu(block->fc1(mid), "tanh");
    }
  }
  return inputs;
}

torch::Tensor norms_of(const torch::Tensor& x) {
  return x.to(torch::kDouble).square().sum(0).sqrt();
}

TEST_CASE("Wanda on attention and dense layers keeps what wanda_mask keeps on their inputs") {
  // Blocks 0 and 2 dense, block 1 MoE.
  auto m = moeprune::VisionTransformer(test::tiny_vit(3, {1}));
  torch::manual_seed(3);
  const auto images = torch::randn({4, 1, 28, 28});
  const auto inputs = hand_inputs(m, images);
  std::map<std::string, torch::Tensor> before;
  for (const auto& entry : test::view(m)->linears()) {
    before[entry.name] = entry.linear->weight.detach().clone();
  }
  const auto experts = m->moe_layer(1)->experts()->w1.detach().clone();
  REQUIRE(before.size() == 10);  // qkv, proj in 3 blocks; fc1, fc2 in 2

  const auto report = cm::sparsify(*test::view(m, test::one_batch(images)),
                                   cm::ExpertSparsityOptions()
                                       .method(cm::SparsityMethod::kWanda)
                                       .sequential(false)
                                       .targets(cm::SparsityTargets::parse("attention,dense")));
  CHECK(report.layers.empty());
  REQUIRE(report.linears.size() == 5);  // attention x 3, dense x 2
  CHECK(report.linears[0].name == "block0");
  CHECK(report.linears[0].role == moeprune::LinearRole::kAttention);
  CHECK(report.linears[0].linears == std::vector<std::string>{"block0.qkv", "block0.proj"});
  CHECK(report.linears[0].tokens == inputs.at("block0.qkv").size(0));
  CHECK(report.linears[1].role == moeprune::LinearRole::kDenseMLP);
  CHECK(report.linears[2].block == 1);
  CHECK(report.linears[3].block == 2);
  const auto pattern = cm::SparsityPattern::unstructured(0.5);
  for (const auto& entry : test::view(m)->linears()) {
    INFO(entry.name);
    const auto& w = before.at(entry.name);
    const auto kept = cm::wanda_mask(w, norms_of(inputs.at(entry.name)), pattern);
    CHECK(torch::equal(entry.linear->weight, w * kept.to(w.scalar_type())));
  }
  for (const auto& r : report.linears) {
    CHECK(r.sparsity() == 0.5);
    CHECK(r.relative_error > 0.0);
    CHECK(r.relative_error < 1.0);
  }
  CHECK(torch::equal(m->moe_layer(1)->experts()->w1, experts));  // experts not targeted
}

TEST_CASE("SparseGPT on attention calibrates each block on the blocks pruned before it") {
  auto base = moeprune::VisionTransformer(test::tiny_vit(2, {1}));
  torch::manual_seed(4);
  const auto images = torch::randn({6, 1, 28, 28});
  const auto options = cm::ExpertSparsityOptions()
                           .method(cm::SparsityMethod::kSparseGPT)
                           .pattern(cm::SparsityPattern::n_of_m(2, 4))
                           .targets(cm::SparsityTargets::parse("experts,attention"));
  // Expected: block 0's qkv from the unpruned model, block 1's qkv from the model whose block 0
  // (attention; it has no MoE layer) is pruned already.
  auto stepwise = test::round_trip(base, "linear_sgpt_steps");
  const auto x0 = hand_inputs(stepwise, images).at("block0.qkv").to(torch::kDouble);
  const auto w0 = stepwise->blocks[0]->qkv->weight.detach().clone();
  const auto expected0 = cm::sparsegpt(w0, x0.t().mm(x0), options.pattern()).weight;
  cm::sparsify(*test::view(stepwise, test::one_batch(images)),
               cm::ExpertSparsityOptions(options).layers({0}));
  REQUIRE(torch::allclose(stepwise->blocks[0]->qkv->weight, expected0, 1e-5, 1e-6));
  const auto x1 = hand_inputs(stepwise, images).at("block1.qkv").to(torch::kDouble);
  const auto w1 = stepwise->blocks[1]->qkv->weight.detach().clone();
  const auto expected1 = cm::sparsegpt(w1, x1.t().mm(x1), options.pattern()).weight;

  auto seq = test::round_trip(base, "linear_sgpt_seq");
  const auto report = cm::sparsify(*test::view(seq, test::one_batch(images)), options);
  REQUIRE(report.layers.size() == 1);
  REQUIRE(report.linears.size() == 2);
  CHECK(torch::allclose(seq->blocks[0]->qkv->weight, expected0, 1e-5, 1e-6));
  CHECK(torch::allclose(seq->blocks[1]->qkv->weight, expected1, 1e-5, 1e-6));
  // 2:4: exactly two of every four inputs kept in each row.
  const auto groups = seq->blocks[1]->proj->weight.ne(0).reshape({-1, 4}).sum(1);
  CHECK(groups.eq(2).all().item<bool>());
  // Together (one pass of the unpruned model): block 1 differs.
  auto together = test::round_trip(base, "linear_sgpt_together");
  cm::sparsify(*test::view(together, test::one_batch(images)),
               cm::ExpertSparsityOptions(options).sequential(false));
  CHECK(torch::allclose(together->blocks[0]->qkv->weight, expected0, 1e-5, 1e-6));
  CHECK_FALSE(torch::allclose(together->blocks[1]->qkv->weight, expected1, 1e-5, 1e-6));
}

TEST_CASE("magnitude on dense layers needs no calibration") {
  auto m = moeprune::VisionTransformer(test::tiny_vit(2, {1}));
  const auto w = m->blocks[0]->fc1->weight.detach().clone();
  const auto report =
      cm::sparsify(*test::view(m), cm::ExpertSparsityOptions()
                                       .method(cm::SparsityMethod::kMagnitude)
                                       .targets(cm::SparsityTargets::parse("dense")));
  REQUIRE(report.linears.size() == 1);
  CHECK(std::isnan(report.linears[0].relative_error));
  const auto kept = cm::magnitude_mask(w, cm::SparsityPattern::unstructured(0.5));
  CHECK(torch::equal(m->blocks[0]->fc1->weight, w * kept.to(w.scalar_type())));
}

TEST_CASE("quantising attention: RTN as rtn_quantize rounds, GPTQ on the layer's inputs") {
  auto m = moeprune::VisionTransformer(test::tiny_vit(2, {1}));
  torch::manual_seed(6);
  const auto images = torch::randn({4, 1, 28, 28});
  const auto scheme = cm::QuantScheme().bits(4).group_size(8).symmetric(false);
  const auto qkv = m->blocks[0]->qkv->weight.detach().clone();
  const auto fc1 = m->blocks[0]->fc1->weight.detach().clone();
  const auto x = hand_inputs(m, images).at("block0.qkv").to(torch::kDouble);
  auto gptq_model = test::round_trip(m, "quant_attention");
  cm::quantize(*test::view(m), cm::QuantizeOptions()
                                   .method(cm::QuantMethod::kRTN)
                                   .scheme(scheme)
                                   .calibration(cm::ExpertSparsityOptions().targets(
                                       cm::SparsityTargets::parse("attention"))));
  CHECK(torch::equal(m->blocks[0]->qkv->weight, cm::rtn_quantize(qkv, scheme).dequantize()));
  CHECK(torch::equal(m->blocks[0]->fc1->weight, fc1));  // dense MLPs not targeted
  const auto fp64 = cm::GPTQOptions().dtype(torch::kDouble);
  cm::quantize(*test::view(gptq_model, test::one_batch(images)),
               cm::QuantizeOptions().scheme(scheme).gptq(fp64).calibration(
                   cm::ExpertSparsityOptions().targets(cm::SparsityTargets::parse("attention"))));
  CHECK(torch::allclose(gptq_model->blocks[0]->qkv->weight,
                        cm::gptq(qkv, x.t().mm(x), scheme, fp64).weight, 1e-5, 1e-6));
}

TEST_CASE("a dense layer no calibration token reaches is refused by name") {
  torch::nn::Linear used(4, 3), idle(4, 3);
  cm::LinearCalibration calibration({{0, "used", moeprune::LinearRole::kAttention, used},
                                     {0, "idle", moeprune::LinearRole::kAttention, idle}});
  used(torch::randn({2, 4}));
  CHECK_THROWS_WITH(calibration.finish(), Catch::Contains("no calibration tokens reached idle"));
}

TEST_CASE("sparsity targets: parsing and the refusals") {
  CHECK(cm::SparsityTargets::parse("all").describe() == "all");
  CHECK(cm::SparsityTargets::parse("dense,experts").describe() == "experts,dense");
  CHECK(cm::SparsityTargets().describe() == "experts");
  CHECK_THROWS_WITH(cm::SparsityTargets::parse("experts,mlp"),
                    Catch::Contains("unknown sparsity target 'mlp'"));
  CHECK_THROWS_WITH(cm::SparsityTargets::parse("dense,dense"), Catch::Contains("dense twice"));
  CHECK_THROWS_WITH(cm::SparsityTargets::parse(""), Catch::Contains("unknown sparsity target ''"));

  auto m = moeprune::VisionTransformer(test::tiny_vit(2, {1}));
  const auto images = torch::randn({2, 1, 28, 28});
  const auto v = test::view(m, test::one_batch(images));
  const auto with = [](const std::string& targets) {
    return cm::ExpertSparsityOptions().targets(cm::SparsityTargets::parse(targets));
  };
  CHECK_THROWS_WITH(cm::sparsify(*v, with("shared_experts")),
                    Catch::Contains("the target shared_experts has no linear layers in this model "
                                    "(its dense layers: attention, dense)"));
  CHECK_THROWS_WITH(cm::sparsify_experts(*v, with("experts,attention")),
                    Catch::Contains("prunes the experts only"));
  CHECK_THROWS_WITH(cm::sparsify(*v, with("attention").layers({5})),
                    Catch::Contains("no MoE layer or dense block keyed 5"));
  CHECK_THROWS_WITH(cm::sparsify(*test::view(m), with("attention")),
                    Catch::Contains("wanda needs calibration data"));
  auto dense = moeprune::VisionTransformer(test::tiny_vit(2, {}));
  CHECK_THROWS_WITH(cm::sparsify(*test::view(dense, test::one_batch(images)), with("experts")),
                    Catch::Contains("the model has no MoE layers"));
  // "all" takes what the model has: no shared experts here, and no refusal.
  const auto all = cm::sparsify(*test::view(m, test::one_batch(images)), with("all"));
  CHECK(all.layers.size() == 1);
  CHECK(all.linears.size() == 3);  // attention x 2, block 0's dense MLP
  // A dense ViT's attention alone is fine.
  const auto report =
      cm::sparsify(*test::view(dense, test::one_batch(images)), with("attention").layers({1}));
  REQUIRE(report.linears.size() == 1);
  CHECK(report.linears[0].name == "block1");
}

}  // namespace linear_sparsity_test
