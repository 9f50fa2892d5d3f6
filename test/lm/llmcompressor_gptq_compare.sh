#!/usr/bin/env bash
# ctest: `moeprune quantize --method gptq` against llm-compressor 0.14.0.1's GPTQ (a second,
# independent implementation; scripts/llmcompressor_python) on a tiny random Qwen3-MoE made by
# transformers 4.57.6, with the same 8 x 32 calibration tokens, W4 groups of 16, llm-compressor's
# rule (its default actorder "static": act-order with each group's scale from the original
# weights = moeprune's --act-order --static-groups), every expert on its routed tokens, every
# layer on the unquantised model (its "basic" pipeline; moeprune --not-sequential). The codes
# must agree up to near-ties and the scales exactly (check_llmcompressor_gptq.py); moeprune must
# read llm-compressor's packed folder as transformers 4.57.6 computes it once compressed-tensors
# has decompressed it.
#   llmcompressor_gptq_compare.sh MOEPRUNE LM_LOGITS
set -euo pipefail
cli="$1" logits="$2"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
scripts="$here/../../scripts"
work="$(mktemp -d /tmp/moeprune-llmcompressor-gptq-XXXXXX)"
trap 'rm -rf "$work"' EXIT
"$scripts/hf_python" 4.57.6 "$here/make_qwen3_moe_tiny.py" "$work/model" "$work/tokens.safetensors"
"$scripts/llmcompressor_python" "$here/llmcompressor_gptq_reference.py" "$work/model" \
  "$work/tokens.safetensors" "$work/reference" --bits 4 --group-size 16 \
  > "$work/reference.log" 2>&1 || { cat "$work/reference.log" >&2; exit 1; }
"$cli" quantize "$work/model" --method gptq --bits 4 --group-size 16 --act-order \
  --static-groups --not-sequential --calibration "$work/tokens.ids" --samples 8 --seq-len 32 \
  --batch-size 1 --scratch-dir "$work" --format compressed-tensors --out "$work/ours" \
  > "$work/ours.log"
"$scripts/compressed_tensors_python" "$here/check_llmcompressor_gptq.py" "$work/ours" \
  "$work/reference" "$work/reference_dense"
"$cli" inspect "$work/reference" | tee "$work/inspect.log"
grep -q "48 weights stored in compressed-tensors' pack-quantized format" "$work/inspect.log"
"$logits" "$work/reference" "$work/tokens.safetensors" "$work/reference.logits.safetensors"
"$scripts/hf_python" 4.57.6 "$here/check_lm_transformers_load.py" "$work/reference_dense" \
  "$work/reference.logits.safetensors" --tol 1e-5
echo "llmcompressor_gptq_compare: all checks passed"
