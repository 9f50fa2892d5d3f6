#pragma once

// Moved to <moeprune/io/safetensors.h>; this forwarding header goes in the next release.
#include <moeprune/io/safetensors.h>
