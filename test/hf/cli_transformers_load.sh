#!/usr/bin/env bash
# ctest: `moeprune prune` on a fixture checkpoint, then transformers (PyPI) loads the output and
# its MoE blocks must give what moeprune's layers give on the same inputs.
#   cli_transformers_load.sh MOEPRUNE_CLI MOE_OUTPUTS SOURCE_DIR PRETRAINED_DIR ROUTER N EXPERTS TRANSFORMERS_VERSION
set -euo pipefail
cli="$1" outputs="$2" source="$3" pretrained="$4" router="$5" n="$6" experts="$7" version="$8"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d /tmp/moeprune-cli-XXXXXX)"
trap 'rm -rf "$work"' EXIT
"$cli" prune --finetuned "$source" --pretrained "$pretrained" --criterion router_norm_change \
  --experts-per-layer "$n" --router "$router" --out "$work/pruned"
"$outputs" "$work/pruned" "$work/ours.safetensors"
"$here/../../scripts/hf_python" "$version" "$here/check_transformers_load.py" \
  "$work/pruned" "$work/ours.safetensors" "$experts"
