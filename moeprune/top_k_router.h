#pragma once

// Moved to <moeprune/routing/top_k_router.h>; this forwarding header goes in the next release.
#include <moeprune/routing/top_k_router.h>
