#!/usr/bin/env bash
# ctest: `moeprune sparsify` on a fixture language model (the 96-token Mixtral of
# scripts/make_lm_fixtures.py with the chars96 tokenizer), alone and composed with `prune` in
# both orders (the Unified seed's recipe): each output folder must hold the pattern's zeros in
# every expert weight and nothing else changed (check_sparse_experts.py, PyTorch only), and load
# in transformers with moeprune's logits. That the pruning equals the in-memory method is
# test_lm_sparsity.cpp's, and the methods' own references are test_expert_sparsity.cpp's.
#   cli_sparsify.sh MOEPRUNE LM_LOGITS FIXTURE_DIR REFERENCE TOKENIZER TRANSFORMERS_VERSION
set -euo pipefail
cli="$1" logits="$2" source="$3" reference="$4" tokenizer="$5" version="$6"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
hf_python="$here/../../scripts/hf_python"
work="$(mktemp -d /tmp/moeprune-cli-sparsify-XXXXXX)"
trap 'rm -rf "$work"' EXIT
cp -r "$source" "$work/model"
cp "$tokenizer" "$work/model/tokenizer.json"
text="Mixture-of-experts layers route each token to a few experts; slimming keeps every expert and drops the weights that matter least inside each, while pruning drops whole experts: 0123456789!"
printf '%s' "${text:0:160}" > "$work/calibration.txt"
calibration=(--calibration "$work/calibration.txt" --samples 8 --seq-len 20 --batch-size 8
             --scratch-dir "$work")

# loads DIR in transformers and compares with moeprune's logits of DIR
loads_with_our_logits() {
  "$logits" "$1" "$reference" "$1.logits.safetensors"
  "$hf_python" "$version" "$here/check_lm_transformers_load.py" "$1" "$1.logits.safetensors" \
    --tol 1e-5
}

# SparseGPT 2:4 (weights updated), router-weighted.
"$cli" sparsify "$work/model" --method sparsegpt --nm 2:4 --router-weighted "${calibration[@]}" \
  --out "$work/sparse24" --json "$work/sparse24.json" | tee "$work/sparse24.log"
grep -q '"sparsity": 0.5' "$work/sparse24.json"
grep -q '50.00% of .* expert weights are zero' "$work/sparse24.log"
if ls "$work"/moeprune-sparse-* >/dev/null 2>&1; then
  echo "scratch files were left behind" >&2
  exit 1
fi
"$hf_python" "$version" "$here/check_sparse_experts.py" "$work/sparse24" "$work/model" 2:4
loads_with_our_logits "$work/sparse24"
"$cli" inspect "$work/sparse24" | grep -q \
  'sparsified: sparsegpt 2:4 inside the experts (routed calibration, router-weighted, sequential)'

# Prune 2 of 8 experts with the router kept, then Wanda 50% on the survivors: the pruned
# experts stay zero, the record of both is kept.
"$cli" prune --finetuned "$work/model" --criterion random --experts-per-layer 2 --router keep \
  --out "$work/pruned"
"$cli" sparsify "$work/pruned" --method wanda --sparsity 0.5 "${calibration[@]}" \
  --out "$work/pruned_sparse"
"$hf_python" "$version" "$here/check_sparse_experts.py" "$work/pruned_sparse" "$work/pruned" 0.5
grep -q '"layer_states"' "$work/pruned_sparse/config.json"
grep -q '"sparsity"' "$work/pruned_sparse/config.json"
loads_with_our_logits "$work/pruned_sparse"

# Wanda 50% first, then cut 2 experts: the survivors keep their zeros and the record.
"$cli" sparsify "$work/model" --method wanda --sparsity 0.5 "${calibration[@]}" \
  --out "$work/sparse"
"$cli" prune --finetuned "$work/sparse" --criterion random --experts-per-layer 2 --router cut \
  --out "$work/sparse_pruned"
grep -q '"sparsity"' "$work/sparse_pruned/config.json"
"$cli" inspect "$work/sparse_pruned" | grep -q 'sparsified: wanda 50% unstructured inside'
loads_with_our_logits "$work/sparse_pruned"
echo "cli_sparsify: all checks passed"
