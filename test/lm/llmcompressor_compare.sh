#!/usr/bin/env bash
# ctest: `moeprune sparsify` against llm-compressor 0.14.0.1 (a second, independent Wanda and
# SparseGPT) on a tiny random Qwen3-MoE made by transformers 4.57.6, with the same 8 x 32
# calibration tokens, for Wanda and SparseGPT at 50% and 2:4, each expert calibrated on its
# routed tokens or on all tokens. llm-compressor runs its "basic" pipeline (every layer
# calibrated on the unpruned model, with the causal mask; its default pipelines calibrate
# without the causal mask on this model), so moeprune runs --not-sequential.
# Wanda must give identical weights, SparseGPT the same zeros up to near-ties
# (check_llmcompressor_match.py). Then the same with the attention projections as targets too
# (--targets experts,attention; llm-compressor's targets regex for them).
#   llmcompressor_compare.sh MOEPRUNE
set -euo pipefail
cli="$1"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
scripts="$here/../../scripts"
work="$(mktemp -d /tmp/moeprune-llmcompressor-XXXXXX)"
trap 'rm -rf "$work"' EXIT
"$scripts/hf_python" 4.57.6 "$here/make_qwen3_moe_tiny.py" "$work/model" "$work/tokens.safetensors"
for method in wanda sparsegpt; do
  for pattern in 0.5 2:4; do
    for calibration in routed all; do
      name="$method-${pattern/:/of}-$calibration"
      echo "== $method $pattern, $calibration"
      shape=(--sparsity "$pattern")
      [[ "$pattern" == *:* ]] && shape=(--nm "$pattern")
      "$cli" sparsify "$work/model" --method "$method" "${shape[@]}" \
        --expert-calibration "$calibration" --not-sequential --calibration "$work/tokens.ids" \
        --samples 8 --seq-len 32 --batch-size 1 --scratch-dir "$work" --out "$work/$name" \
        > "$work/$name.log"
      "$scripts/llmcompressor_python" "$here/llmcompressor_reference.py" "$work/model" \
        "$work/tokens.safetensors" "$work/$name.safetensors" --method "$method" \
        --pattern "$pattern" --calibration "$calibration" > "$work/$name.reference.log" 2>&1 || {
        cat "$work/$name.reference.log" >&2
        exit 1
      }
      "$scripts/hf_python" 4.57.6 "$here/check_llmcompressor_match.py" "$work/$name" \
        "$work/$name.safetensors" --method "$method"
    done
  done
done
for method in wanda sparsegpt; do
  pattern=0.5 shape=(--sparsity 0.5)
  [[ "$method" == sparsegpt ]] && pattern=2:4 shape=(--nm 2:4)
  name="$method-${pattern/:/of}-attention"
  echo "== $method $pattern, routed, experts and attention"
  "$cli" sparsify "$work/model" --method "$method" "${shape[@]}" --targets experts,attention \
    --not-sequential --calibration "$work/tokens.ids" --samples 8 --seq-len 32 --batch-size 1 \
    --scratch-dir "$work" --out "$work/$name" > "$work/$name.log"
  "$scripts/llmcompressor_python" "$here/llmcompressor_reference.py" "$work/model" \
    "$work/tokens.safetensors" "$work/$name.safetensors" --method "$method" \
    --pattern "$pattern" --calibration routed --attention > "$work/$name.reference.log" 2>&1 || {
    cat "$work/$name.reference.log" >&2
    exit 1
  }
  "$scripts/hf_python" 4.57.6 "$here/check_llmcompressor_match.py" "$work/$name" \
    "$work/$name.safetensors" --method "$method"
done
echo "llmcompressor_compare: all checks passed"
