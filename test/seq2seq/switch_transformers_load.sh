#!/usr/bin/env bash
# ctest: Switch Transformers folders written by moeprune load in transformers (PyPI) with no
# missing or unexpected weights and give moeprune's logits: the fixture model with its experts
# merged (M-SMoE, 3 groups per MoE layer) by test/seq2seq/switch_logits, and the model
# examples/switch_compress pre-trains (a few steps) from scratch.
#   switch_transformers_load.sh SWITCH_LOGITS SWITCH_COMPRESS FIXTURE_DIR REFERENCE VERSION
set -euo pipefail
logits="$1" compress="$2" source="$3" reference="$4" version="$5"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d /tmp/moeprune-switch-XXXXXX)"
trap 'rm -rf "$work"' EXIT
check() {
  "$here/../../scripts/hf_python" "$version" "$here/check_switch_transformers_load.py" "$@" \
    --tol 1e-5
}
"$logits" "$source" "$reference" "$work/merged.safetensors" "$work/merged" 3
check "$work/merged" "$work/merged.safetensors"
# The whole MC-SMoE pipeline at toy sizes; its pre-trained model is saved in Hugging Face form.
"$compress" --out "$work/compress" --pretrain-steps 3 --d-model 32 --experts 4 --layers 2 \
  --kd-steps 2 --compress-steps 8 --rank 2 --batch 4 --eval-batches 1 --max-tokens 40 \
  --threads 1
test -s "$work/compress/results.json"
"$logits" "$work/compress/pretrained" "$reference" "$work/pretrained.safetensors"
check "$work/compress/pretrained" "$work/pretrained.safetensors"
