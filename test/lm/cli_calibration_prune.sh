#!/usr/bin/env bash
# ctest: `moeprune prune --calibration TEXT` on a fixture language model (the 96-token Mixtral of
# scripts/make_lm_fixtures.py with the chars96 tokenizer) streams the text through the model one
# layer at a time and must prune exactly as examples/lm_prune does in memory on the same token
# ids (same criterion, same 8 sequences in one batch): the two checkpoints give identical logits.
# transformers then loads the command's output with moeprune's logits (router rows kept, pruned
# experts zero).
#   cli_calibration_prune.sh MOEPRUNE LM_PRUNE LM_LOGITS FIXTURE_DIR REFERENCE TOKENIZER CRITERION
#                            TRANSFORMERS_VERSION
set -euo pipefail
cli="$1" lm_prune="$2" logits="$3" source="$4" reference="$5" tokenizer="$6" criterion="$7"
version="$8"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d /tmp/moeprune-cli-cal-XXXXXX)"
trap 'rm -rf "$work"' EXIT
cp -r "$source" "$work/model"
cp "$tokenizer" "$work/model/tokenizer.json"
# 160 printable ASCII characters: 160 tokens, 8 sequences of 20.
text="Mixture-of-experts layers route each token to a few experts; pruning keeps the ones that matter most for the task at hand, and drops the rest of them, 0123456789!"
printf '%s' "${text:0:160}" > "$work/calibration.txt"
"$cli" tokenize "$work/model" --file "$work/calibration.txt" --no-special --out "$work/calibration.ids"
"$cli" prune --finetuned "$work/model" --criterion "$criterion" \
  --calibration "$work/calibration.txt" --samples 8 --seq-len 20 --batch-size 8 \
  --experts-per-layer 2 --router keep --out "$work/streamed"
"$lm_prune" "$work/model" "$work/calibration.ids" "$work/in_memory" --context 20 --prune 2 \
  --criterion "$criterion"
"$logits" "$work/streamed" "$reference" "$work/streamed.safetensors"
"$logits" "$work/in_memory" "$reference" "$work/in_memory.safetensors"
cmp "$work/streamed.safetensors" "$work/in_memory.safetensors"
echo "streamed and in-memory pruning give identical logits"
"$here/../../scripts/hf_python" "$version" "$here/check_lm_transformers_load.py" \
  "$work/streamed" "$work/streamed.safetensors" --tol 1e-5
