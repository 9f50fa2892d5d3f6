#pragma once

// Moved to <moeprune/ops/ops.h>; this forwarding header goes in the next release.
#include <moeprune/ops/ops.h>
