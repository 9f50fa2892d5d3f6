#pragma once

// Moved to <moeprune/models/vision/vision_transformer.h>; this forwarding header goes in the next
// release.
#include <moeprune/models/vision/vision_transformer.h>
