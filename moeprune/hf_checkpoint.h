#pragma once

// Moved to <moeprune/hf/checkpoint.h>; this forwarding header goes in the next release.
#include <moeprune/hf/checkpoint.h>
