#!/usr/bin/env bash
# ctest: `moeprune sparsify --format compressed-tensors` on a fixture language model (the 96-token
# Mixtral of scripts/make_lm_fixtures.py), checked with the PyPI compressed-tensors 0.14.0.1 and
# transformers 4.57.6 (scripts/compressed_tensors_python): the same SparseGPT 2:4 run written
# dense and as sparse-24-bitmask must hold the same weights (compressed-tensors' decompressor on
# our files; its compressor on our dense weights gives our bytes), the sparse folder must load in
# transformers with moeprune's logits of the dense one and be smaller; moeprune reads it, and
# the sparse-bitmask and sparse-24-bitmask folders compressed-tensors itself writes, as the dense
# weights (the same perplexity), and its writers refuse such a source.
#   compressed_tensors_sparse.sh MOEPRUNE LM_LOGITS FIXTURE_DIR REFERENCE TOKENIZER
set -euo pipefail
cli="$1" logits="$2" source="$3" reference="$4" tokenizer="$5"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ct_python="$here/../../scripts/compressed_tensors_python"
work="$(mktemp -d /tmp/moeprune-ct-sparse-XXXXXX)"
trap 'rm -rf "$work"' EXIT
cp -r "$source" "$work/model"
cp "$tokenizer" "$work/model/tokenizer.json"
text="Mixture-of-experts layers route each token to a few experts; slimming keeps every expert and drops the weights that matter least inside each, while pruning drops whole experts: 0123456789!"
printf '%s' "${text:0:160}" > "$work/calibration.txt"
run=(sparsify "$work/model" --method sparsegpt --nm 2:4 --calibration "$work/calibration.txt"
     --samples 8 --seq-len 20 --batch-size 8 --scratch-dir "$work")

"$cli" "${run[@]}" --out "$work/dense"
"$cli" "${run[@]}" --format compressed-tensors --out "$work/ct" | tee "$work/ct.log"
if ls "$work"/moeprune-sparse-* "$work"/*.sparse24 >/dev/null 2>&1; then
  echo "scratch files were left behind" >&2
  exit 1
fi
"$ct_python" "$here/check_compressed_tensors_sparse.py" "$work/dense" "$work/ct"
"$logits" "$work/dense" "$reference" "$work/dense.logits.safetensors"
"$ct_python" "$here/check_lm_transformers_load.py" "$work/ct" "$work/dense.logits.safetensors" \
  --tol 1e-5

# Beyond the experts: the attention projections 2:4 too, compressed beside the experts (the
# config's targets name them) and loaded by transformers with the dense run's logits.
"$cli" "${run[@]}" --targets experts,attention --out "$work/attn_dense"
"$cli" "${run[@]}" --targets experts,attention --format compressed-tensors --out "$work/attn_ct"
"$ct_python" "$here/check_compressed_tensors_sparse.py" "$work/attn_dense" "$work/attn_ct"
"$ct_python" -c 'import re, sys
from safetensors import safe_open
names = safe_open(sys.argv[1] + "/model.safetensors", "pt").keys()
attention = [n for n in names if re.fullmatch(r"model\.layers\.\d+\.self_attn\.[qkvo]_proj\.compressed", n)]
if len(attention) != 8:  # 2 layers x q, k, v, o
    sys.exit(f"{len(attention)} attention projections stored as sparse-24-bitmask, expected 8")' \
  "$work/attn_ct"
grep -q 'self_attn' "$work/attn_ct/config.json" ||
  { echo "the quantization_config targets do not name the attention" >&2; exit 1; }
"$logits" "$work/attn_dense" "$reference" "$work/attn_dense.logits.safetensors"
"$ct_python" "$here/check_lm_transformers_load.py" "$work/attn_ct" \
  "$work/attn_dense.logits.safetensors" --tol 1e-5

# Experts pruned with the router kept stay dense zeros: the config's targets must leave them out
# (transformers would otherwise look for their compressed tensors).
"$cli" prune --finetuned "$work/model" --criterion random --experts-per-layer 2 --router keep \
  --out "$work/pruned"
"$cli" "${run[@]/#$work\/model/$work/pruned}" --out "$work/pruned_dense"
"$cli" "${run[@]/#$work\/model/$work/pruned}" --format compressed-tensors --out "$work/pruned_ct"
"$ct_python" "$here/check_compressed_tensors_sparse.py" "$work/pruned_dense" "$work/pruned_ct"
"$logits" "$work/pruned_dense" "$reference" "$work/pruned_dense.logits.safetensors"
"$ct_python" "$here/check_lm_transformers_load.py" "$work/pruned_ct" \
  "$work/pruned_dense.logits.safetensors" --tol 1e-5

dense_bytes=$(cat "$work"/dense/*.safetensors | wc -c)
ct_bytes=$(cat "$work"/ct/*.safetensors | wc -c)
echo "safetensors bytes: dense $dense_bytes, sparse-24-bitmask $ct_bytes"
if ((ct_bytes >= dense_bytes)); then
  echo "the sparse-24-bitmask folder is not smaller" >&2
  exit 1
fi

# moeprune reads both formats, what it writes and what compressed-tensors itself writes, as the
# dense weights: the same perplexity to the last digit.
eval_line() {
  "$cli" eval "$1" "$work/calibration.txt" --context 20 2>/dev/null | grep 'tokens scored' |
    sed "s|^$1: ||"
}
same_eval() {
  local got want
  got="$(eval_line "$1")" want="$(eval_line "$2")"
  echo "$1: $got"
  if [[ -z "$want" || "$got" != "$want" ]]; then
    echo "moeprune eval of $1 differs from $2's: '$got' vs '$want'" >&2
    exit 1
  fi
}
same_eval "$work/ct" "$work/dense"
"$ct_python" "$here/make_compressed_tensors_sparse.py" "$work/dense" "$work/ct_own" \
  sparse-24-bitmask
same_eval "$work/ct_own" "$work/dense"
"$cli" sparsify "$work/model" --method wanda --sparsity 0.5 "${run[@]:6}" --out "$work/dense50"
"$ct_python" "$here/make_compressed_tensors_sparse.py" "$work/dense50" "$work/bitmask50" \
  sparse-bitmask
same_eval "$work/bitmask50" "$work/dense50"
"$cli" inspect "$work/bitmask50" | grep -q 'sparsified: wanda 50% unstructured'

# Zeroing experts (--router keep) would need dense weights: a sparse-format source is refused.
if "$cli" prune --finetuned "$work/ct" --criterion random --experts-per-layer 2 --router keep \
  --out "$work/ct_pruned" > "$work/prune.log" 2>&1; then
  echo "moeprune prune wrote from a sparse-24-bitmask folder" >&2
  exit 1
fi
grep -q 'writes new or zeroed weights only from dense checkpoints' "$work/prune.log" || { cat "$work/prune.log" >&2; exit 1; }
# sparsify and merge refuse it before calibrating (no layer table printed).
refuses_sparse_source() {
  if "$cli" "$@" > "$work/refused.log" 2>&1; then
    echo "moeprune $1 wrote from a sparse-24-bitmask folder" >&2
    exit 1
  fi
  grep -q 'writes new or zeroed weights only from dense checkpoints' "$work/refused.log" ||
    { cat "$work/refused.log" >&2; exit 1; }
  if grep -q 'block_sparse_moe' "$work/refused.log"; then
    echo "moeprune $1 calibrated before refusing" >&2
    exit 1
  fi
}
refuses_sparse_source "${run[@]/#$work\/model/$work/ct}" --out "$work/ct_refused"
refuses_sparse_source merge "$work/ct" --groups-per-layer 3 --calibration "$work/calibration.txt" \
  --samples 8 --seq-len 20 --out "$work/ct_refused"
# Any other quantisation is refused by the readers, naming it, not as a missing tensor.
cp -r "$work/model" "$work/gptq"
"$ct_python" -c 'import json, sys
p = sys.argv[1] + "/config.json"
c = json.load(open(p))
c["quantization_config"] = {"quant_method": "awq", "bits": 4}
json.dump(c, open(p, "w"))' "$work/gptq"
if "$cli" inspect "$work/gptq" > "$work/gptq.log" 2>&1; then
  echo "moeprune inspect read an AWQ folder" >&2
  exit 1
fi
grep -q 'stored quantised or compressed (quantization_config: awq); moeprune reads dense' \
  "$work/gptq.log" || { cat "$work/gptq.log" >&2; exit 1; }
echo "compressed_tensors_sparse: all checks passed"
