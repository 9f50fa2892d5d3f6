#pragma once

// Moved to <moeprune/layers/expert_bank.h>; this forwarding header goes in the next release.
#include <moeprune/layers/expert_bank.h>
