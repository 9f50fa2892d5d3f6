#!/usr/bin/env bash
# ctest: what `moeprune score`, `prune --budget` and `eval` print equals an independent reference
# (check_cli_references.py): the router-norm-change scores recomputed from the fixtures' router
# tensors, budget plans from a naive greedy over those scores (by hand for budget 8, floor 0 on
# these fixtures: experts 1-4 of both layers, since layer 1 reaches its top-k floor of 2 kept
# before its expert 5 comes up, so layer 0's expert 3 goes instead), and transformers' NLL over the
# same windows (fp32 and bf16); a budget no plan meets is refused with no plan written. REAP's
# scores on the language fixture (calibration ids) are uneven enough across its two layers that
# the floor changes the plan (budget 6: floor 3 gives 3 + 3, floor 0 gives 2 + 4).
#   cli_references.sh MOEPRUNE FINETUNED PRETRAINED LM_FIXTURE IDS TRANSFORMERS_VERSION
set -euo pipefail
cli="$1" finetuned="$2" pretrained="$3" lm="$4" ids="$5" version="$6"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
check=("$here/../../scripts/hf_python" "$version" "$here/check_cli_references.py")
work="$(mktemp -d /tmp/moeprune-cli-references-XXXXXX)"
trap 'rm -rf "$work"' EXIT
"$cli" score --finetuned "$finetuned" --pretrained "$pretrained" --out "$work/scores.json"
"${check[@]}" scores "$finetuned" "$pretrained" "$work/scores.json"
# The fixtures' routers choose 2 of 6 experts.
for budget_floor in "8 0" "5 3" "3 0" "6 3"; do
  read -r budget floor <<<"$budget_floor"
  "$cli" prune --finetuned "$finetuned" --pretrained "$pretrained" --budget "$budget" \
    --floor "$floor" --plan-only "$work/plan-$budget-$floor.json" > /dev/null
  "${check[@]}" budget "$work/scores.json" "$work/plan-$budget-$floor.json" "$budget" "$floor" 2
done
reap=(--criterion reap --calibration "$ids" --samples 2 --seq-len 5)
"$cli" score --finetuned "$lm" "${reap[@]}" --out "$work/reap.json" > /dev/null
for budget_floor in "6 3" "6 0" "4 4"; do
  read -r budget floor <<<"$budget_floor"
  plan="$work/reap-plan-$budget-$floor.json"
  "$cli" prune --finetuned "$lm" "${reap[@]}" --budget "$budget" --floor "$floor" \
    --plan-only "$plan" > /dev/null
  "${check[@]}" budget "$work/reap.json" "$plan" "$budget" "$floor" 2
done
"$here/expect_refusal.sh" "more than the 6 the layers can lose with a floor of 3" -- \
  "$cli" prune --finetuned "$finetuned" --pretrained "$pretrained" --budget 8 --floor 3 \
  --plan-only plan.json
# 300 token ids over the fixture's 96-token vocabulary, in windows of 64 (5 windows).
awk 'BEGIN { for (i = 0; i < 300; ++i) printf "%d ", (i * 37 + (i * i) % 11) % 96 }' \
  > "$work/tokens.ids"
"$cli" eval "$lm" "$work/tokens.ids" --context 64 --json "$work/eval.json" > /dev/null
"${check[@]}" eval "$lm" "$work/tokens.ids" "$work/eval.json" 64
# --dtype bf16: near transformers' bf16 NLL, not moeprune's fp32 one, and the streamed run (the
# default) the same to the bit as the in-memory model, which lm_bf16_layers checks op by op.
"$cli" eval "$lm" "$work/tokens.ids" --context 64 --dtype bf16 --json "$work/eval-bf16.json" \
  > /dev/null
"${check[@]}" eval "$lm" "$work/tokens.ids" "$work/eval-bf16.json" 64 bf16 "$work/eval.json"
"$cli" eval "$lm" "$work/tokens.ids" --context 64 --dtype bf16 --in-memory \
  --json "$work/eval-bf16-memory.json" > /dev/null
"${check[@]}" same_nll "$work/eval-bf16.json" "$work/eval-bf16-memory.json"
