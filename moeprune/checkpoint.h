#pragma once

// Moved to <moeprune/io/checkpoint.h>; this forwarding header goes in the next release.
#include <moeprune/io/checkpoint.h>
