#pragma once

// Moved to <moeprune/train/readers.h>; this forwarding header goes in the next release.
#include <moeprune/train/readers.h>
