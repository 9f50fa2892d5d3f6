// T5 span corruption (train/span_corruption.h): the corrupted share and span count of
// random_spans_noise_mask, and inputs and targets that rebuild the document exactly.
#include <moeprune/train/span_corruption.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

using namespace moeprune::data;

namespace {

constexpr int64_t kSentinelBase = 1000;  // sentinel i = 999 - i, above every document token

SpanCorruptionOptions options() {
  SpanCorruptionOptions o;
  o.sentinel([](int64_t i) { return kSentinelBase - 1 - i; });
  return o;
}

bool is_sentinel(int64_t id) {
  return id >= kSentinelBase - 100 && id < kSentinelBase;
}

}  // namespace

TEST_CASE("the noise mask corrupts round(density * length) tokens in round(noise / 3) spans") {
  std::mt19937_64 rng(5);
  for (int64_t length = 2; length <= 80; ++length) {
    const auto mask = random_spans_noise_mask(length, options(), rng);
    REQUIRE(static_cast<int64_t>(mask.size()) == length);
    int64_t noise = 0, spans = 0;
    for (size_t i = 0; i < mask.size(); ++i) {
      noise += mask[i] ? 1 : 0;
      spans += (mask[i] && (i == 0 || !mask[i - 1])) ? 1 : 0;
    }
    // Hand-computed expectation: 15% of the tokens (at least 1, at most length - 1), spans of
    // mean length 3 (at least 1), as random_spans_noise_mask in t5/data/preprocessors.py.
    const int64_t want_noise =
        std::min<int64_t>(std::max<int64_t>(std::llround(0.15 * length), 1), length - 1);
    const int64_t want_spans =
        std::min<int64_t>(std::max<int64_t>(std::llround(want_noise / 3.0), 1),
                          std::min(want_noise, length - want_noise));
    INFO("length " << length);
    CHECK(noise == want_noise);
    CHECK(spans == want_spans);
    CHECK_FALSE(mask.front());  // runs start with kept tokens
  }
}

TEST_CASE("span-corrupted inputs and targets rebuild the document with sentinels in order") {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<int64_t> doc;
    const int64_t length = 5 + trial * 3;
    for (int64_t i = 0; i < length; ++i) {
      doc.push_back(10 + (i * 7 + trial) % 50);
    }
    const auto ex = span_corrupt(doc, options(), rng);
    REQUIRE(ex.input.back() == 1);  // eos
    REQUIRE(ex.target.back() == 1);
    // Target segments: sentinel i followed by the tokens it replaced.
    std::vector<std::vector<int64_t>> spans;
    for (size_t j = 0; j + 1 < ex.target.size(); ++j) {
      if (is_sentinel(ex.target[j])) {
        REQUIRE(ex.target[j] == kSentinelBase - 1 - static_cast<int64_t>(spans.size()));
        spans.emplace_back();
      } else {
        REQUIRE_FALSE(spans.empty());
        spans.back().push_back(ex.target[j]);
      }
    }
    std::vector<int64_t> rebuilt;
    size_t next = 0;
    for (size_t j = 0; j + 1 < ex.input.size(); ++j) {
      if (is_sentinel(ex.input[j])) {
        REQUIRE(ex.input[j] == kSentinelBase - 1 - static_cast<int64_t>(next));
        REQUIRE(next < spans.size());
        rebuilt.insert(rebuilt.end(), spans[next].begin(), spans[next].end());
        ++next;
      } else {
        rebuilt.push_back(ex.input[j]);
      }
    }
    CHECK(next == spans.size());
    CHECK(rebuilt == doc);
  }
}

TEST_CASE("collate pads inputs with the pad id and labels with -100") {
  const std::vector<SpanCorruptionExample> examples = {{{5, 6, 7}, {8, 1}}, {{9}, {4, 3, 1}}};
  const auto t = collate(examples, 0);
  CHECK(torch::equal(t.input_ids, torch::tensor({{5, 6, 7}, {9, 0, 0}}, torch::kLong)));
  CHECK(torch::equal(t.attention_mask, torch::tensor({{1, 1, 1}, {1, 0, 0}}, torch::kLong)));
  CHECK(torch::equal(t.labels, torch::tensor({{8, 1, -100}, {4, 3, 1}}, torch::kLong)));
  std::mt19937_64 rng(1);
  CHECK_THROWS_WITH(random_spans_noise_mask(1, options(), rng),
                    Catch::Matchers::Contains("at least 2 tokens"));
}
