#pragma once

// Moved to <moeprune/routing/functional/aux_losses.h>; this forwarding header goes in the next
// release.
#include <moeprune/routing/functional/aux_losses.h>
