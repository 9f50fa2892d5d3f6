#!/usr/bin/env bash
# ctest: the language demo's training is deterministic: two short runs (6 pre-training and 4
# fine-tuning steps), one with 1 torch thread and one with 2, write byte-identical checkpoints;
# and its cache is reused only for the recipe it was trained with (another step count retrains,
# saying why; the same one reuses).
#   lm_demo_deterministic.sh LM_DEMO
set -euo pipefail
demo="$1"
work="$(mktemp -d /tmp/moeprune-lm-deterministic-XXXXXX)"
trap 'rm -rf "$work"' EXIT
short=(--checkpoints-only --language es --pretrain-steps 6 --finetune-steps 4)
"$demo" "${short[@]}" --threads 1 --cache-dir "$work/one" --out-dir "$work/out1" > "$work/one.log"
"$demo" "${short[@]}" --threads 2 --cache-dir "$work/two" --out-dir "$work/out2" > "$work/two.log"
for model in lm_pretrained_mixtral lm_finetuned_mixtral_es; do
  cmp "$work/one/$model/model.safetensors" "$work/two/$model/model.safetensors"
done
grep -F "bits per byte" "$work/one.log"
# The same recipe reuses both checkpoints; another pre-training step count retrains both (the
# fine-tuned one starts from a new pre-trained checkpoint).
"$demo" "${short[@]}" --threads 2 --cache-dir "$work/two" --out-dir "$work/out2" > "$work/again.log"
grep -q "pre-trained model: reusing" "$work/again.log"
grep -q "fine-tuned model: reusing" "$work/again.log"
"$demo" --checkpoints-only --language es --pretrain-steps 7 --finetune-steps 4 --threads 2 \
  --cache-dir "$work/two" --out-dir "$work/out2" > "$work/other.log"
grep -q 'trained otherwise (steps 7 (cached: 6))' "$work/other.log"
grep -q "fine-tuning on" "$work/other.log"
echo "deterministic across 1 and 2 threads; the cache follows the recipe"
