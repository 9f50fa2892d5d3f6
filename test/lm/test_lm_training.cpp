// train_lm: the language-model fine-tuning loop (schedule, clipping, checkpointing, log).
#include "../scratch_dir.h"

#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/evaluation.h>
#include <moeprune/train/lm_trainer.h>
#include <moeprune/train/schedule.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <fstream>

TEST_CASE("the warm-up cosine schedule at hand-computed steps", "[lm]") {
  // 10 warm-up steps to 1e-3, then cosine over 90 steps to 1e-4.
  CHECK(moeprune::warmup_cosine_lr(0, 100, 1e-3, 10, 0.1) == Approx(1e-4));
  CHECK(moeprune::warmup_cosine_lr(9, 100, 1e-3, 10, 0.1) == Approx(1e-3));
  CHECK(moeprune::warmup_cosine_lr(10, 100, 1e-3, 10, 0.1) == Approx(1e-3));
  // Half-way through the decay: low + (base - low) / 2.
  CHECK(moeprune::warmup_cosine_lr(55, 100, 1e-3, 10, 0.1) == Approx(5.5e-4));
  CHECK(moeprune::warmup_cosine_lr(100, 100, 1e-3, 10, 0.1) == Approx(1e-4));
}

TEST_CASE("train_lm learns a repeating token pattern and logs the run", "[lm]") {
  auto model = moeprune::lm::load_causal_lm(MOEPRUNE_TEST_FIXTURES "/lm/olmoe");
  // A period-7 pattern: after a few steps the next token is predictable from the context.
  const auto pattern = torch::tensor({3, 17, 42, 8, 91, 23, 60}, torch::kLong);
  const auto stream = pattern.repeat({40});
  const auto before = moeprune::lm::perplexity(model, stream.narrow(0, 0, 64),
                                               moeprune::lm::PerplexityOptions().context(32));
  const auto log = test::scratch_dir() + "/lm_train/log.json";
  const auto result = moeprune::train_lm(model, stream, stream.narrow(0, 0, 64),
                                         moeprune::LMTrainerOptions()
                                             .steps(30)
                                             .batch_size(4)
                                             .context(16)
                                             .lr(1e-2)
                                             .warmup_steps(3)
                                             .eval_every(10)
                                             .eval_context(32)
                                             .gradient_checkpointing(true)
                                             .log_path(log)
                                             .progress(false));
  REQUIRE(result.steps.size() == 30);
  REQUIRE(result.evals.size() == 3);  // steps 10, 20 and the end
  INFO("perplexity " << before.perplexity() << " -> " << result.evals.back().perplexity);
  // A uniform guess over the 96 tokens is perplexity 96; the pattern is nearly deterministic.
  CHECK(result.evals.back().perplexity < 0.25 * before.perplexity());
  CHECK(result.steps.back().loss < result.steps.front().loss);
  CHECK(result.steps[0].lr == Approx(1e-2 / 3));
  CHECK(!model->gradient_checkpointing());
  std::ifstream in(log);
  const auto json = nlohmann::json::parse(in);
  CHECK(json.at("steps").size() == 30);
  CHECK(json.at("evals").back().at("perplexity").get<double>() ==
        Approx(result.evals.back().perplexity));
  CHECK_THROWS_WITH(moeprune::train_lm(model, stream.narrow(0, 0, 10), {},
                                       moeprune::LMTrainerOptions().context(16).progress(false)),
                    Catch::Contains("a window needs context + 1 = 17"));
}

TEST_CASE("train_lm's distillation term and hooks: the gradient of the loss written by hand",
          "[lm]") {
  // A stream of exactly context + 1 tokens has one window, so the step's batch is known.
  auto model = moeprune::lm::load_causal_lm(MOEPRUNE_TEST_FIXTURES "/lm/mixtral");
  auto teacher = moeprune::lm::load_causal_lm(MOEPRUNE_TEST_FIXTURES "/lm/mixtral");
  {
    torch::NoGradGuard no_grad;
    for (auto& p : teacher->parameters()) p.add_(0.05 * torch::randn_like(p));
  }
  const auto stream = torch::randint(96, {9}, torch::kLong);
  torch::Tensor grad;
  std::vector<std::pair<std::string, int64_t>> calls;
  moeprune::train_lm(
      model, stream, {},
      moeprune::LMTrainerOptions()
          .steps(1)
          .batch_size(2)
          .context(8)
          .lr(0.0)
          .warmup_steps(0)
          .clip_norm(0)
          .teacher(teacher)
          .distill_weight(0.5)
          .distill_temperature(3.0)
          .progress(false)
          .after_backward([&](int64_t s, int64_t n) {
            calls.emplace_back("backward", s * 10 + n);
            grad = model->lm_head->weight.grad().clone();
          })
          .after_step([&](int64_t s, int64_t n) { calls.emplace_back("step", s * 10 + n); }));
  CHECK(calls == std::vector<std::pair<std::string, int64_t>>{{"backward", 1}, {"step", 1}});
  // The same loss by hand: CE + aux + 0.5 * sum_v p_t (log p_t - log p_s) at T = 3, averaged
  // over the 16 positions.
  auto reference = moeprune::lm::load_causal_lm(MOEPRUNE_TEST_FIXTURES "/lm/mixtral");
  reference->train();
  const auto batch = stream.unsqueeze(0).repeat({2, 1});
  const auto out = reference->forward(batch.narrow(1, 0, 8));
  const auto logits = out.logits.reshape({16, -1});
  torch::Tensor t;
  {
    torch::NoGradGuard no_grad;
    teacher->eval();
    t = teacher->forward(batch.narrow(1, 0, 8)).logits.reshape({16, -1});
  }
  const auto pt = torch::softmax(t / 3.0, -1);
  const auto kl = (pt * (torch::log_softmax(t / 3.0, -1) - torch::log_softmax(logits / 3.0, -1)))
                      .sum(-1)
                      .mean();
  const auto ce = torch::cross_entropy_loss(logits, batch.narrow(1, 1, 8).reshape({-1}));
  (ce + out.aux_loss + 0.5 * kl).backward();
  CHECK(torch::allclose(grad, reference->lm_head->weight.grad(), 1e-5, 1e-7));
  CHECK_THROWS_WITH(moeprune::train_lm(model, stream, {},
                                       moeprune::LMTrainerOptions()
                                           .steps(1)
                                           .context(8)
                                           .progress(false)
                                           .teacher(teacher)
                                           .distill_temperature(0)),
                    Catch::Contains("distill_temperature should be > 0"));
}
