#pragma once

// Moved to <moeprune/train/trainer.h>; this forwarding header goes in the next release.
#include <moeprune/train/trainer.h>
