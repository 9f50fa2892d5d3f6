#pragma once

// Moved to <moeprune/layers/moe_layer.h>; this forwarding header goes in the next release.
#include <moeprune/layers/moe_layer.h>
