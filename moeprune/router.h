#pragma once

// Moved to <moeprune/routing/router.h>; this forwarding header goes in the next release.
#include <moeprune/routing/router.h>
