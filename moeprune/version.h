#pragma once

namespace moeprune {
inline constexpr const char* kVersion = "0.1.0";
}  // namespace moeprune
