#!/usr/bin/env bash
# check_layering.sh must see every include form: a scratch tree shaped like the library holds one
# planted violation per form (and a folder the table lacks, and an include of no file); each must
# be reported, and the same tree without them must pass.
# Usage: check_layering_catches.sh CHECK_SCRIPT
set -u
check="$1"
tree="$(mktemp -d)"
trap 'rm -rf "$tree"' EXIT
cd "$tree" || exit 2
mkdir -p moeprune/io moeprune/layers moeprune/models/lm csrc/hf csrc/layers csrc/pruning \
  csrc/text csrc/models/lm csrc/models/vision csrc/distributed csrc/ops
touch moeprune/io/safetensors.h moeprune/layers/moe_layer.h moeprune/models/lm/causal_lm.h \
  csrc/hf/config.h csrc/models/lm/streamed.h csrc/models/vision/trim.h csrc/text/utf8.h
mkdir -p moeprune/routing && touch moeprune/routing/routing_plan.h moeprune/routing/router.h

# Allowed, in every form: must not be reported.
cat >csrc/hf/ok.cpp <<'EOF'
#include <moeprune/io/safetensors.h>
#include "moeprune/layers/moe_layer.h"
#include "hf/config.h"
#include "config.h"
#include <torch/torch.h>
#include <vector>
EOF
cat >csrc/ops/ok.cpp <<'EOF'
#include <moeprune/routing/routing_plan.h>
EOF
cat >csrc/text/ok.cpp <<'EOF'
#include "utf8.h"
EOF

expect_ok() {
  local out
  if ! out="$(bash "$check" "$tree" 2>&1)"; then
    echo "FAIL: the tree with allowed includes only was refused:"
    echo "$out"
    exit 1
  fi
}
expect_ok

# One violation per form; each line below must appear in the report.
cat >csrc/hf/bad_angle.cpp <<'EOF'
#include <moeprune/models/lm/causal_lm.h>
EOF
cat >csrc/hf/bad_csrc_relative.cpp <<'EOF'
#include "models/lm/streamed.h"
EOF
cat >csrc/pruning/bad_relative.cpp <<'EOF'
  #  include "../models/vision/trim.h"
EOF
cat >csrc/layers/bad_quoted_public.cpp <<'EOF'
#include "moeprune/models/lm/causal_lm.h"
EOF
cat >csrc/distributed/bad_text.cpp <<'EOF'
#include "text/utf8.h"
EOF
cat >csrc/ops/bad_router.cpp <<'EOF'
#include <moeprune/routing/router.h>
EOF
cat >csrc/models/lm/bad_sibling.cpp <<'EOF'
#include "models/vision/trim.h"
EOF
cat >csrc/hf/bad_missing.cpp <<'EOF'
#include "hf/no_such_file.h"
EOF
# A flat header (a folder the table does not know).
cat >moeprune/routing_plan.h <<'EOF'
#include <moeprune/routing/routing_plan.h>
EOF

out="$(bash "$check" "$tree" 2>&1)"
rc=$?
missing=0
for want in "csrc/hf/bad_angle.cpp:1:" "csrc/hf/bad_csrc_relative.cpp:1:" \
  "csrc/pruning/bad_relative.cpp:1:" "csrc/layers/bad_quoted_public.cpp:1:" \
  "csrc/distributed/bad_text.cpp:1:" "csrc/ops/bad_router.cpp:1:" \
  "csrc/models/lm/bad_sibling.cpp:1:" "csrc/hf/bad_missing.cpp:1:" "moeprune/routing_plan.h:"; do
  if ! grep -qF "$want" <<<"$out"; then
    echo "FAIL: the planted violation in ${want%%:*} was not reported"
    missing=1
  fi
done
for clean in csrc/hf/ok.cpp csrc/ops/ok.cpp csrc/text/ok.cpp; do
  if grep -qF "$clean" <<<"$out"; then
    echo "FAIL: the allowed includes of $clean were reported"
    missing=1
  fi
done
if [ "$rc" -eq 0 ]; then
  echo "FAIL: check_layering.sh exited 0 with violations planted"
  missing=1
fi
if [ "$missing" -ne 0 ]; then
  echo "--- its report:"
  echo "$out"
  exit 1
fi
echo "check_layering_catches: all 9 planted violations reported, allowed includes not"
