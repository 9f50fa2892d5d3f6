#!/usr/bin/env bash
# ctest: moeprune's bf16 models op group by op group against transformers' bf16 models
# (bf16_layers_reference.py, lm_bf16_layers): embedding, every attention, every MLP or MoE block,
# the final norm and the LM head on transformers' own inputs, within MAX_ULPS bf16 ulps of each
# token's largest value.
#   lm_bf16_layers.sh LM_BF16_LAYERS FIXTURES MAX_ULPS TRANSFORMERS_VERSION FAMILY...
set -euo pipefail
checker="$1" fixtures="$2" max_ulps="$3" version="$4"
shift 4
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d /tmp/moeprune-bf16-layers-XXXXXX)"
trap 'rm -rf "$work"' EXIT
"$here/../../scripts/hf_python" "$version" "$here/bf16_layers_reference.py" "$fixtures" "$work" "$@"
failed=()
for family in "$@"; do
  echo "== $family"
  "$checker" "$fixtures/$family" "$work/$family.safetensors" "$max_ulps" || failed+=("$family")
done
if ((${#failed[@]})); then
  echo "over $max_ulps ulps: ${failed[*]}" >&2
  exit 1
fi
