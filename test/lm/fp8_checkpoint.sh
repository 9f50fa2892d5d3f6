#!/usr/bin/env bash
# ctest: block-scaled FP8 checkpoints (DeepSeek-V3's format: e4m3 weights with weight_scale_inv
# per block) made from the tiny DeepSeek-V3 and GLM-4.5 fixtures by make_fp8_checkpoint.py
# (blocks of 4 x 4): moeprune reads each as transformers 5.24.0 dequantises it
# (scripts/accelerate_python: its FP8 loader on a machine without a GPU), i.e. its logits within
# 1e-5 of transformers' on the same folder; `moeprune prune --router cut` cuts experts out of the
# GLM one (the DeepSeek-V3 fixture's groups leave no expert to spare) keeping every survivor's
# FP8 bytes and block scales as they were (nothing requantised), and transformers loads that
# folder with moeprune's logits of it; what would need new weights (--router keep) is refused.
#   fp8_checkpoint.sh MOEPRUNE LM_LOGITS DEEPSEEK_V3_DIR REFERENCE GLM4_MOE_DIR REFERENCE
set -euo pipefail
cli="$1" logits="$2" v3="$3" v3_reference="$4" glm="$5" reference="$6"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
scripts="$here/../../scripts"
work="$(mktemp -d /tmp/moeprune-fp8-XXXXXX)"
trap 'rm -rf "$work"' EXIT
# reads NAME SOURCE REFERENCE WEIGHTS: the FP8 copy of SOURCE, read as transformers reads it.
reads() {
  "$scripts/hf_python" 5.24.0 "$here/make_fp8_checkpoint.py" "$2" "$work/$1" --block 4 4
  "$cli" inspect "$work/$1" | tee "$work/$1.inspect.log"
  grep -q "$4 weights stored in block-scaled FP8 (read as dense)" "$work/$1.inspect.log"
  "$logits" "$work/$1" "$3" "$work/$1.logits.safetensors"
  "$scripts/accelerate_python" 5.24.0 "$here/check_lm_transformers_load.py" "$work/$1" \
    "$work/$1.logits.safetensors" --tol 1e-5
}
reads v3 "$v3" "$v3_reference" 69
reads fp8 "$glm" "$reference" "$(
  "$scripts/hf_python" 5.24.0 - "$glm" <<'PY'
import re, sys
from safetensors import safe_open
names = safe_open(sys.argv[1] + "/model.safetensors", "pt").keys()
print(sum(bool(re.fullmatch(r".*\.(self_attn|mlp)\..*_proj\.weight", n)) for n in names))
PY
)"

"$cli" prune --finetuned "$work/fp8" --criterion random --experts-per-layer 2 --router cut \
  --out "$work/cut" | tee "$work/cut.log"
"$scripts/hf_python" 5.24.0 - "$work/fp8" "$work/cut" <<'PY'
import json, re, sys
import torch
from safetensors.torch import load_file
src, cut = sys.argv[1:3]
a = load_file(src + "/model.safetensors")
b = load_file(cut + "/model.safetensors")
with open(cut + "/config.json") as f:
    pruned = json.load(f)["moeprune"]["pruned_experts"]
expert = re.compile(r"(model\.layers\.(\d+)\.mlp\.experts\.)(\d+)(\..*)")
router = re.compile(r"(model\.layers\.\d+\.mlp)\.gate\.(weight|e_score_correction_bias)")
checked = 0
for name, t in a.items():
    m = expert.fullmatch(name)
    if not m:
        r = router.fullmatch(name)
        if r:  # the kept experts' rows
            gone = pruned[r.group(1)]
            t = t[[j for j in range(t.shape[0]) if j not in gone]]
        if not torch.equal(b[name].view(torch.uint8), t.contiguous().view(torch.uint8)):
            sys.exit(f"{name} changed")
        continue
    gone = pruned[f"model.layers.{m.group(2)}.mlp"]
    j = int(m.group(3))
    if j in gone:
        continue
    new = m.group(1) + str(j - sum(g < j for g in gone)) + m.group(4)
    if b[new].dtype != t.dtype or not torch.equal(b[new].view(torch.uint8), t.view(torch.uint8)):
        sys.exit(f"{name} -> {new}: the bytes changed")
    checked += 1
print(f"cut: {checked} surviving expert tensors (FP8 weights and block scales) byte for byte")
PY
"$logits" "$work/cut" "$reference" "$work/cut.logits.safetensors"
"$scripts/accelerate_python" 5.24.0 "$here/check_lm_transformers_load.py" "$work/cut" \
  "$work/cut.logits.safetensors" --tol 1e-5
if "$cli" prune --finetuned "$work/fp8" --criterion random --experts-per-layer 2 \
  --router keep --out "$work/keep" 2> "$work/keep.err"; then
  echo "prune --router keep of an FP8 folder was not refused" >&2
  exit 1
fi
grep -q 'block-scaled FP8 or the GPTQ layout); moeprune reads it, and cuts experts out of it' \
  "$work/keep.err"
echo "fp8_checkpoint: all checks passed"
