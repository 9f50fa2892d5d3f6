#pragma once

// Moved to <moeprune/train/image_dataset.h>; this forwarding header goes in the next release.
#include <moeprune/train/image_dataset.h>
