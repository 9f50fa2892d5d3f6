#!/usr/bin/env bash
# ctest: `moeprune inspect` on broken copies of a fixture (break_checkpoint.py). A top-k the
# experts cannot meet is refused by inspect itself, naming config.json and its keys. The other
# faults (attention shape, rope scaling, missing embedding, extra tensor) are outside what inspect
# reads: it exits 0 and says so ("--check loads the whole model"), and `inspect --check` refuses
# each, naming the tensor or key.
#   cli_inspect_check.sh MOEPRUNE FIXTURE_DIR
set -euo pipefail
cli="$1" fixture="$2"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d /tmp/moeprune-inspect-check-XXXXXX)"
trap 'rm -rf "$work"' EXIT
while IFS='|' read -r fault message; do
  python3 "$here/break_checkpoint.py" "$fixture" "$work/$fault" "$fault"
  if [ "$fault" = top_k ]; then
    "$here/expect_refusal.sh" "$message" -- "$cli" inspect "$work/$fault"
  else
    out="$("$cli" inspect "$work/$fault")"
    grep -qF -- "--check loads the whole model" <<<"$out" || {
      echo "inspect $fault did not say what it left unchecked:" >&2
      echo "$out" >&2
      exit 1
    }
  fi
  "$here/expect_refusal.sh" "$message" -- "$cli" inspect "$work/$fault" --check
done <<'CASES'
top_k|config.json: num_experts_per_tok = 7 should be in [1, num_local_experts = 6]
head_dim|tensor 'model.layers.0.self_attn.q_proj.weight' has shape [32, 32], config.json implies [64, 32]
rope|"rope_scaling" = {"rope_type":"longrope","factor":2.0} is not supported
no_embedding|tensor 'model.embed_tokens.weight' is missing
extra_tensor|1 tensor is not part of a mixtral with this config.json (first: 'model.layers.0.extra.weight')
CASES
"$cli" inspect "$fixture" --check | grep -F "checked: the whole model loads (53 tensors"
