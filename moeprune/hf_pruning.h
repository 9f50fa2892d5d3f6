#pragma once

// Moved to <moeprune/hf/pruning.h>; this forwarding header goes in the next release.
#include <moeprune/hf/pruning.h>
