#!/usr/bin/env bash
# ctest: examples/lm_prune prunes a fixture language model in memory (MODE keep / cut: 2 experts
# per MoE layer, router rows kept or dropped; layer-drop: one MoE block; block-drop: one decoder
# layer), fine-tunes it for a few steps and saves it; transformers (PyPI) then loads the folder
# with no missing or unexpected weights and must give moeprune's logits.
#   lm_transformers_load.sh LM_PRUNE LM_LOGITS FIXTURE_DIR REFERENCE MODE TRANSFORMERS_VERSION
set -euo pipefail
prune="$1" logits="$2" source="$3" reference="$4" mode="$5" version="$6"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d /tmp/moeprune-lm-XXXXXX)"
trap 'rm -rf "$work"' EXIT
# 200 calibration tokens (the fixtures' vocabulary is 96).
for i in $(seq 0 199); do echo $(( (i * 37 + 11) % 96 )); done > "$work/tokens.txt"
case "$mode" in
  keep) flags=(--prune 2) ;;
  cut) flags=(--prune 2 --drop-router-rows) ;;
  layer-drop) flags=(--layer-drop 1) ;;
  block-drop) flags=(--block-drop 1) ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
"$prune" "$source" "$work/tokens.txt" "$work/pruned" --context 20 \
  --finetune-steps 3 --lr 1e-3 "${flags[@]}"
"$logits" "$work/pruned" "$reference" "$work/ours.safetensors"
"$here/../../scripts/hf_python" "$version" "$here/check_lm_transformers_load.py" \
  "$work/pruned" "$work/ours.safetensors" --tol 1e-5
