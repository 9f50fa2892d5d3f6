#pragma once

// Moved to <moeprune/routing/functional/routing.h>; this forwarding header goes in the next
// release.
#include <moeprune/routing/functional/routing.h>
