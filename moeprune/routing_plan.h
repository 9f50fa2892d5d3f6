#pragma once

// Moved to <moeprune/routing/routing_plan.h>; this forwarding header goes in the next release.
#include <moeprune/routing/routing_plan.h>
