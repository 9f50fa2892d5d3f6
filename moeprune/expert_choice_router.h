#pragma once

// Moved to <moeprune/routing/expert_choice_router.h>; this forwarding header goes in the next
// release.
#include <moeprune/routing/expert_choice_router.h>
