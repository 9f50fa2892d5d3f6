#include <moeprune/layers/expert_bank_state.h>

#include "io/json.h"

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <algorithm>

namespace moeprune {
namespace {

nlohmann::json parse_object(const std::string& text, const char* what) {
  auto j = io::parse_json(text, what);
  io::expect_object(j, what);
  return j;
}

nlohmann::json bank_json(const ExpertBankState& s) {
  nlohmann::json j = {{"num_experts", s.num_experts}, {"held", s.held}};
  if (!s.groups.empty()) {
    j["groups"] = s.groups;
  }
  if (s.rank > 0) {
    j["rank"] = s.rank;
  }
  return j;
}

ExpertBankState bank_from(const nlohmann::json& j) {
  constexpr const char* what = "expert bank state";
  TORCH_CHECK(j.is_object(), what, ": expected a JSON object, got ", j.type_name());
  for (const char* key : {"num_experts", "held"}) {
    TORCH_CHECK(j.contains(key), what, ": lacks '", key, "'");
  }
  ExpertBankState s;
  try {
    s.num_experts = j.at("num_experts").get<int64_t>();
    s.held = j.at("held").get<std::vector<int64_t>>();
    s.groups = j.value("groups", std::vector<std::vector<int64_t>>{});
    s.rank = j.value("rank", int64_t{0});
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, what, ": a field has the wrong type (", e.what(), ")");
  }
  TORCH_CHECK(s.num_experts >= 1, what, ": num_experts should be >= 1, got ", s.num_experts);
  TORCH_CHECK(!s.held.empty(), what, ": 'held' names no expert");
  TORCH_CHECK(s.rank >= 0, what, ": rank should be >= 0, got ", s.rank);
  for (const int64_t e : s.held) {
    TORCH_CHECK(e >= 0 && e < s.num_experts, what, ": held expert ", e, " is outside [0, ",
                s.num_experts, ")");
  }
  TORCH_CHECK(s.groups.empty() || s.groups.size() == s.held.size(), what, ": ", s.groups.size(),
              " merge groups for ", s.held.size(), " held experts");
  for (const auto& g : s.groups) {
    for (const int64_t e : g) {
      TORCH_CHECK(e >= 0 && e < s.num_experts, what, ": merge group expert ", e, " is outside [0, ",
                  s.num_experts, ")");
    }
  }
  return s;
}

}  // namespace

bool ExpertBankState::is_plain() const {
  return groups.empty() && rank == 0 && static_cast<int64_t>(held.size()) == num_experts;
}

std::string ExpertBankState::to_json() const {
  return bank_json(*this).dump();
}

ExpertBankState ExpertBankState::from_json(const std::string& text) {
  return bank_from(parse_object(text, "expert bank state"));
}

bool ExpertBankState::operator==(const ExpertBankState& o) const {
  return num_experts == o.num_experts && held == o.held && groups == o.groups && rank == o.rank;
}

std::string MoELayerState::to_json() const {
  auto j = bank_json(bank);
  if (router_rows_dropped) {
    j["router_rows_dropped"] = true;
  }
  return j.dump();
}

MoELayerState MoELayerState::from_json(const std::string& text) {
  const auto j = parse_object(text, "MoE layer state");
  MoELayerState s;
  s.bank = bank_from(j);
  const auto it = j.find("router_rows_dropped");
  if (it != j.end()) {
    TORCH_CHECK(it->is_boolean(), "MoE layer state: 'router_rows_dropped' should be a boolean");
    s.router_rows_dropped = it->get<bool>();
  }
  return s;
}

bool MoELayerState::operator==(const MoELayerState& o) const {
  return bank == o.bank && router_rows_dropped == o.router_rows_dropped;
}

std::ostream& operator<<(std::ostream& out, const ExpertBankState& state) {
  return out << state.to_json();
}

std::ostream& operator<<(std::ostream& out, const MoELayerState& state) {
  return out << state.to_json();
}

}  // namespace moeprune
