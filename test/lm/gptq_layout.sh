#!/usr/bin/env bash
# ctest: checkpoints in the GPTQ layout (qweight/qzeros/scales/g_idx, AutoGPTQ / GPTQModel's
# "gptq" format) written from the format's documentation by make_gptq_checkpoint.py from the
# 96-token Mixtral fixture, beside their dense twins (the same weights dequantised as GPTQModel
# does): moeprune reads each with its twin's logits bit for bit, and transformers 4.57.6 computes
# those logits from the twin; experts cut out of a GPTQ folder (`prune --router cut`, the parts
# copied) give the same model as the same cut of the twin. 4-bit with act-order's shuffled
# g_idx, 8-bit and 2-bit in column order; 3 bits refused.
#   gptq_layout.sh MOEPRUNE LM_LOGITS FIXTURE_DIR REFERENCE
set -euo pipefail
cli="$1" logits="$2" source="$3" reference="$4"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
hf_python="$here/../../scripts/hf_python"
work="$(mktemp -d /tmp/moeprune-gptq-XXXXXX)"
trap 'rm -rf "$work"' EXIT

# same_logits A B: moeprune's logits of folders A and B are equal bit for bit.
same_logits() {
  "$logits" "$1" "$reference" "$1.logits.safetensors"
  "$logits" "$2" "$reference" "$2.logits.safetensors"
  "$hf_python" 4.57.6 -c 'import sys, torch
from safetensors.torch import load_file
a, b = (load_file(p)["logits"] for p in sys.argv[1:3])
sys.exit(0 if torch.equal(a, b) else f"{sys.argv[1]} and {sys.argv[2]} differ by {(a - b).abs().max()}")' \
    "$1.logits.safetensors" "$2.logits.safetensors"
}

for spec in "4 --desc-act" "8" "2"; do
  read -r bits flag <<< "$spec"
  name="w$bits"
  # shellcheck disable=SC2086 # flag is empty or one word
  "$hf_python" 4.57.6 "$here/make_gptq_checkpoint.py" "$source" "$work/$name" \
    "$work/$name.dense" --bits "$bits" --group-size 16 $flag
  "$cli" inspect "$work/$name" | grep -q "36 weights stored in the GPTQ layout (read as dense)"
  same_logits "$work/$name" "$work/$name.dense"
  "$hf_python" 4.57.6 "$here/check_lm_transformers_load.py" "$work/$name.dense" \
    "$work/$name.logits.safetensors" --tol 1e-5
  echo "$name: moeprune reads the GPTQ layout as its dense twin"
done

prune=(prune --criterion random --experts-per-layer 2 --router cut)
"$cli" "${prune[@]}" --finetuned "$work/w4" --out "$work/w4_cut"
"$cli" "${prune[@]}" --finetuned "$work/w4.dense" --out "$work/w4_cut.dense"
same_logits "$work/w4_cut" "$work/w4_cut.dense"

cp -r "$work/w4" "$work/w3"
"$hf_python" 4.57.6 -c 'import json, sys
p = sys.argv[1] + "/config.json"
c = json.load(open(p))
c["quantization_config"]["bits"] = 3
json.dump(c, open(p, "w"))' "$work/w3"
if "$cli" inspect "$work/w3" > "$work/w3.log" 2>&1; then
  echo "a 3-bit GPTQ folder was read" >&2
  exit 1
fi
grep -q 'quantization_config.bits is 3; moeprune reads the GPTQ layout at 2, 4 or 8 bits' \
  "$work/w3.log"
echo "gptq_layout: all checks passed"
