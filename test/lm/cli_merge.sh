#!/usr/bin/env bash
# ctest: `moeprune merge` on a fixture language model (the 96-token Mixtral of
# scripts/make_lm_fixtures.py with the chars96 tokenizer): the merged folder must load in
# transformers with moeprune's logits (router rows kept, every member of a group holding the
# group's merged weights), and the command's JSON must list the groups. That the merge equals
# the in-memory M-SMoE merge is test_lm_merge.cpp's.
#   cli_merge.sh MOEPRUNE LM_LOGITS FIXTURE_DIR REFERENCE TOKENIZER TRANSFORMERS_VERSION
set -euo pipefail
cli="$1" logits="$2" source="$3" reference="$4" tokenizer="$5" version="$6"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d /tmp/moeprune-cli-merge-XXXXXX)"
trap 'rm -rf "$work"' EXIT
cp -r "$source" "$work/model"
cp "$tokenizer" "$work/model/tokenizer.json"
text="Mixture-of-experts layers route each token to a few experts; merging keeps what the experts know and drops the copies, while pruning drops whole experts: 0123456789!"
printf '%s' "${text:0:160}" > "$work/calibration.txt"
"$cli" merge "$work/model" --calibration "$work/calibration.txt" --samples 8 --seq-len 20 \
  --batch-size 8 --groups-per-layer 2 --scratch-dir "$work" --out "$work/merged" \
  --json "$work/merge.json"
grep -q '"groups"' "$work/merge.json"
test -f "$work/merged/merge_groups.json"
if ls "$work"/moeprune-merged-* >/dev/null 2>&1; then
  echo "scratch files were left behind" >&2
  exit 1
fi
"$logits" "$work/merged" "$reference" "$work/merged.safetensors"
"$here/../../scripts/hf_python" "$version" "$here/check_lm_transformers_load.py" \
  "$work/merged" "$work/merged.safetensors" --tol 1e-5
