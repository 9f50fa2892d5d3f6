#!/usr/bin/env bash
# ctest: `moeprune quantize --format compressed-tensors` (pack-quantized) on a fixture language
# model (the 96-token Mixtral of scripts/make_lm_fixtures.py), checked with the PyPI
# compressed-tensors 0.14.0.1 and transformers 4.57.6 (scripts/compressed_tensors_python): each
# run is written dense (dequantised) and packed with the same options; compressed-tensors'
# decompressor must give the dense run's weights exactly, its compressor our words, the config's
# targets exactly the packed modules (check_compressed_tensors_quantized.py); the packed folder
# must load in transformers with moeprune's logits of the dense one, be smaller, and read in
# moeprune as the dense one. Schemes:
# GPTQ W4 g16 act-order (g_idx), GPTQ W4 g16 asymmetric with static groups, RTN W8 per channel
# asymmetric on the experts and the attention, and RTN W4 on a bf16 copy (scales stored bf16);
# and experts cut out of a packed folder by `moeprune prune`.
#   compressed_tensors_quantized.sh MOEPRUNE LM_LOGITS FIXTURE_DIR REFERENCE TOKENIZER
set -euo pipefail
cli="$1" logits="$2" source="$3" reference="$4" tokenizer="$5"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ct_python="$here/../../scripts/compressed_tensors_python"
work="$(mktemp -d /tmp/moeprune-ct-quantized-XXXXXX)"
trap 'rm -rf "$work"' EXIT
cp -r "$source" "$work/model"
cp "$tokenizer" "$work/model/tokenizer.json"
text="Mixture-of-experts layers route each token to a few experts; slimming keeps every expert and drops the weights that matter least inside each, while pruning drops whole experts: 0123456789!"
printf '%s' "${text:0:160}" > "$work/calibration.txt"
calibration=(--calibration "$work/calibration.txt" --samples 8 --seq-len 20 --batch-size 8
             --scratch-dir "$work")
experts=36      # 2 layers x 6 experts x 3 projections
attention=8     # 2 layers x q, k, v, o

# quantize NAME MODEL EXPECTED_PACKED OPTIONS...: dense and packed runs, compared.
quantize() {
  local name="$1" model="$2" expect="$3"
  shift 3
  "$cli" quantize "$model" "$@" --out "$work/$name.dense" > "$work/$name.dense.log"
  "$cli" quantize "$model" "$@" --format compressed-tensors --out "$work/$name" |
    tee "$work/$name.log"
  grep -q 'stored compressed-tensors pack-quantized' "$work/$name.log"
  "$ct_python" "$here/check_compressed_tensors_quantized.py" "$work/$name.dense" "$work/$name" \
    --expect "$expect"
  local dense packed
  dense=$(stat -c %s "$work/$name.dense/model.safetensors")
  packed=$(stat -c %s "$work/$name/model.safetensors")
  echo "$name: model.safetensors $packed bytes packed, $dense dense"
  ((packed < dense)) || { echo "$name: the packed file is not smaller" >&2; exit 1; }
}
# loads DIR in transformers and compares with moeprune's logits of its dense twin; moeprune
# reads DIR (decoding the packed weights) with the dense twin's logits bit for bit.
loads_with_dense_logits() {
  "$logits" "$1.dense" "$reference" "$1.dense.logits.safetensors"
  "$ct_python" "$here/check_lm_transformers_load.py" "$1" "$1.dense.logits.safetensors" \
    --tol 1e-5
  "$logits" "$1" "$reference" "$1.logits.safetensors"
  "$ct_python" -c 'import sys, torch
from safetensors.torch import load_file
a, b = (load_file(p)["logits"] for p in sys.argv[1:3])
sys.exit(0 if torch.equal(a, b) else f"moeprune reads {sys.argv[1]} with other logits")' \
    "$1.logits.safetensors" "$1.dense.logits.safetensors"
}

quantize gptq4 "$work/model" "$experts" --method gptq --bits 4 --group-size 16 --act-order \
  "${calibration[@]}"
grep -q '"actorder": "group"' "$work/gptq4/config.json"
loads_with_dense_logits "$work/gptq4"

# Cutting 2 of 6 experts per layer out of the packed folder copies the survivors' parts (nothing
# is requantised): the same cut of the dense twin holds the same model. Keeping the router rows
# (zeroing the pruned experts) needs dense weights and is refused.
prune=(prune --criterion random --experts-per-layer 2)
"$cli" "${prune[@]}" --finetuned "$work/gptq4" --router cut --out "$work/gptq4_cut"
"$cli" "${prune[@]}" --finetuned "$work/gptq4.dense" --router cut --out "$work/gptq4_cut.dense"
"$ct_python" "$here/check_compressed_tensors_quantized.py" "$work/gptq4_cut.dense" \
  "$work/gptq4_cut" --expect 24
loads_with_dense_logits "$work/gptq4_cut"
if "$cli" "${prune[@]}" --finetuned "$work/gptq4" --router keep --out "$work/gptq4_keep" \
  2> "$work/keep.err"; then
  echo "prune --router keep of a packed folder was not refused" >&2
  exit 1
fi
grep -q 'cuts experts out of it (prune --router cut)' "$work/keep.err"
# A folder whose config leaves expert 5 dense by name (ignore): cutting an earlier expert would
# renumber it onto a name the config expects packed, so the cut is refused.
cp -r "$work/gptq4" "$work/mixed"
"$ct_python" - "$work/mixed" "$work/model" <<'PY'
import json, sys
from safetensors.torch import load_file, save_file
folder, dense = sys.argv[1:3]
t = load_file(folder + "/model.safetensors")
src = load_file(dense + "/model.safetensors")
modules = [f"model.layers.{n}.block_sparse_moe.experts.5.{w}" for n in (0, 1) for w in ("w1", "w2", "w3")]
for m in modules:
    for part in ("weight_packed", "weight_scale", "weight_shape", "weight_g_idx"):
        t.pop(f"{m}.{part}", None)
    t[m + ".weight"] = src[m + ".weight"]
save_file(t, folder + "/model.safetensors", metadata={"format": "pt"})
with open(folder + "/config.json") as f:
    c = json.load(f)
c["quantization_config"]["ignore"] += modules
with open(folder + "/config.json", "w") as f:
    json.dump(c, f, indent=2)
PY
if "$cli" prune --criterion random --experts-per-layer 1 --router cut --finetuned "$work/mixed" \
  --out "$work/mixed_cut" 2> "$work/mixed.err"; then
  echo "a cut renumbering a dense expert onto a packed name was not refused" >&2
  exit 1
fi
grep -q 'experts.4.w1, which its quantization_config expects pack-quantized while it is stored dense' \
  "$work/mixed.err"

quantize gptq4_static "$work/model" "$experts" --method gptq --bits 4 --group-size 16 \
  --asymmetric --act-order --static-groups "${calibration[@]}"
grep -q '"actorder": "weight"' "$work/gptq4_static/config.json"
loads_with_dense_logits "$work/gptq4_static"

quantize rtn8 "$work/model" $((experts + attention)) --method rtn --bits 8 --group-size 0 \
  --asymmetric --targets experts,attention "${calibration[@]}"
grep -q '"strategy": "channel"' "$work/rtn8/config.json"
loads_with_dense_logits "$work/rtn8"

# bf16: the scales are stored bf16 and the decompressed weights are the dense run's bf16 ones.
"$ct_python" - "$work/model" "$work/model_bf16" <<'PY'
import json, os, shutil, sys
import torch
from safetensors.torch import load_file, save_file
src, dst = sys.argv[1:3]
shutil.copytree(src, dst)
tensors = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
           for k, v in load_file(os.path.join(src, "model.safetensors")).items()}
save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
with open(os.path.join(dst, "config.json")) as f:
    config = json.load(f)
config["torch_dtype"] = "bfloat16"
with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
PY
quantize rtn4_bf16 "$work/model_bf16" "$experts" --method rtn --bits 4 --group-size 16
"$ct_python" -c 'import sys
from safetensors import safe_open
f = safe_open(sys.argv[1] + "/model.safetensors", "pt")
scale = f.get_tensor("model.layers.0.block_sparse_moe.experts.0.w1.weight_scale")
if str(scale.dtype) != "torch.bfloat16":
    sys.exit(f"scales stored {scale.dtype}, expected bfloat16")' "$work/rtn4_bf16"

if ls "$work"/moeprune-sparse-* >/dev/null 2>&1; then
  echo "scratch files were left behind" >&2
  exit 1
fi
echo "compressed_tensors_quantized: all checks passed"
