#pragma once

// Moved to <moeprune/routing/ensemble_router.h>; this forwarding header goes in the next release.
#include <moeprune/routing/ensemble_router.h>
