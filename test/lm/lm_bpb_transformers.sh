#!/usr/bin/env bash
# ctest: the language demo's checkpoint path closed. lm_demo pre-trains and fine-tunes its
# byte-level Mixtral for a few steps (--checkpoints-only: two Hugging Face Mixtral folders),
# `moeprune prune` cuts 4 of 8 experts per layer from the fine-tuned one by router-norm change,
# lm_eval measures bits per byte on the start of the Spanish fortunes' test split, and
# transformers (PyPI) must load the pruned folder and give the same bits per byte within 1e-4.
#   lm_bpb_transformers.sh LM_DEMO MOEPRUNE_CLI LM_EVAL TRANSFORMERS_VERSION
set -euo pipefail
demo="$1" cli="$2" eval="$3" version="$4"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d /tmp/moeprune-bpb-XXXXXX)"
trap 'rm -rf "$work"' EXIT
"$demo" --checkpoints-only --language es --cache-dir "$work/cache" --out-dir "$work/out" \
  --pretrain-steps 6 --finetune-steps 4
"$cli" prune --pretrained "$work/cache/lm_pretrained_mixtral" \
  --finetuned "$work/cache/lm_finetuned_mixtral_es" --criterion router_norm_change \
  --experts-per-layer 4 --router cut --out "$work/pruned"
"$eval" "$work/pruned" --fortunes es --max-tokens 4000 --context 256 \
  --json "$work/ours.json" --save-tokens "$work/tokens.txt"
"$here/../../scripts/hf_python" "$version" "$here/check_lm_bits_per_byte.py" \
  "$work/pruned" "$work/tokens.txt" "$work/ours.json" --context 256 --tol 1e-4
