#pragma once

// Moved to <moeprune/train/progress_bar.h>; this forwarding header goes in the next release.
#include <moeprune/train/progress_bar.h>
