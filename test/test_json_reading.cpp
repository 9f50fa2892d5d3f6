// io/json.h: every reader's JSON errors name the source, the key, what was expected and found.
// The expected messages are written out here from the inputs.
#include "scratch_dir.h"

#include "io/json.h"

#include <catch2/catch.hpp>

#include <fstream>
#include <string>

using Catch::Contains;
using moeprune::io::json_field;

TEST_CASE("JSON text and files are read with errors naming where they came from", "[io]") {
  const auto dir = test::scratch_dir();
  CHECK_THROWS_WITH(moeprune::io::read_json_file(dir + "/absent.json", "a test needs it"),
                    Contains(dir + "/absent.json: cannot open (a test needs it)"));
  std::ofstream(dir + "/broken.json") << "{\"a\": 1,";
  CHECK_THROWS_WITH(moeprune::io::read_json_file(dir + "/broken.json"),
                    Contains(dir + "/broken.json: not valid JSON: ") && Contains("parse error"));
  std::ofstream(dir + "/good.json") << R"({"b": 2, "a": [1, 2]})";
  const auto ordered = moeprune::io::read_json_file<nlohmann::ordered_json>(dir + "/good.json");
  CHECK(ordered.begin().key() == "b");  // ordered_json keeps the file's order
  CHECK(ordered.at("a") == nlohmann::ordered_json::array({1, 2}));
  CHECK_THROWS_WITH(moeprune::io::parse_json("[1, 2", "the plan"),
                    Contains("the plan: not valid JSON: "));
  CHECK_THROWS_WITH(moeprune::io::expect_object(moeprune::io::parse_json("[1]", "x"), "the plan"),
                    Contains("the plan: expected a JSON object, found array"));
}

TEST_CASE("typed JSON fields refuse another type, naming the key and the value", "[io]") {
  const auto j = nlohmann::json::parse(
      R"({"n": 3, "neg": -2, "x": 0.5, "s": "hi", "t": true, "nothing": null, "big": 1e3})");
  CHECK(json_field<int64_t>(j, "n", "f") == 3);
  CHECK(json_field<int64_t>(j, "neg", "f") == -2);
  CHECK(json_field<double>(j, "n", "f") == 3.0);  // an integer is a number
  CHECK(json_field<double>(j, "x", "f") == 0.5);
  CHECK(json_field<std::string>(j, "s", "f") == "hi");
  CHECK(json_field<bool>(j, "t", "f"));
  CHECK(json_field<int64_t>(j, "absent", "f", int64_t{7}) == 7);
  CHECK(json_field<int64_t>(j, "nothing", "f", int64_t{7}) == 7);  // null reads as absent
  CHECK_THROWS_WITH(json_field<int64_t>(j, "absent", "cfg"),
                    Contains("cfg: \"absent\" is missing"));
  CHECK_THROWS_WITH(json_field<int64_t>(j, "x", "cfg"),
                    Contains("cfg: \"x\" is 0.5, not an integer"));
  CHECK_THROWS_WITH(json_field<int64_t>(j, "big", "cfg"),
                    Contains("cfg: \"big\" is 1000.0, not an integer"));
  CHECK_THROWS_WITH(json_field<uint64_t>(j, "neg", "cfg"),
                    Contains("cfg: \"neg\" is -2, not an integer"));
  CHECK_THROWS_WITH(json_field<bool>(j, "n", "cfg"), Contains("cfg: \"n\" is 3, not true/false"));
  CHECK_THROWS_WITH(json_field<std::string>(j, "t", "cfg"),
                    Contains("cfg: \"t\" is true, not a string"));
  CHECK_THROWS_WITH(json_field<double>(j, "s", "cfg"),
                    Contains("cfg: \"s\" is \"hi\", not a number"));
}
