#!/usr/bin/env bash
# The dependency rule of docs/architecture.md, checked on the includes: each folder of moeprune/
# and csrc/ uses only the folders before it in
#   ops, routing < layers < pruning < compression;  layers < distributed;  io < hf;  text;
#   (all of those) < models < train
# In particular the compression core (pruning, compression, hf) works on the model-neutral MoE
# view and never includes a model. Prints every offending include and fails if there is one.
set -u
root="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
cd "$root" || exit 2
status=0

# forbid FOLDER PATTERN: no file under moeprune/FOLDER or csrc/FOLDER includes a moeprune header
# whose path matches PATTERN.
forbid() {
  local folder="$1" pattern="$2" hits
  hits=$(grep -rnE "#include <moeprune/(${pattern})" "moeprune/$folder" "csrc/$folder" 2>/dev/null)
  if [ -n "$hits" ]; then
    echo "$hits"
    status=1
  fi
}

# The old flat paths are forwarding headers now; a library file must use the new ones.
old='(ops|router|routing_plan|top_k_router|expert_choice_router|ensemble_router|expert_bank|moe_layer|checkpoint|safetensors|hf_checkpoint|hf_pruning|vision_transformer|trainer|progress_bar)\.h|functional/|data/'
# What each folder may not include: the folders above it, and the old paths. ops may use the
# routing plan (the contract between the two) and nothing else of routing.
forbid ops "routing/(functional|.*router)|layers/|io/|pruning/|compression/|hf/|models/|train/|distributed/|$old"
forbid routing "ops/|layers/|io/|pruning/|compression/|hf/|models/|train/|distributed/|$old"
forbid layers "io/|pruning/|compression/|hf/|models/|train/|distributed/|$old"
# Expert parallelism splits a layer; the layer sees only the ExpertExchange seam.
forbid distributed "io/|pruning/|compression/|hf/|models/|train/|text/|$old"
forbid text "ops/|routing/|layers/|io/|pruning/|compression/|hf/|models/|train/|$old"
forbid io "ops/|routing/|layers/|pruning/|compression/|hf/|models/|train/|$old"
forbid pruning "compression/|hf/|models/|train/|$old"
forbid compression "hf/|models/|train/|$old"
forbid hf "compression/|models/|train/|$old"
forbid models "train/|$old"
# The model families stand side by side: neither uses the other.
forbid models/lm "models/(vision|seq2seq)/"
forbid models/vision "models/(lm|seq2seq)/"
forbid models/seq2seq "models/(lm|vision)/"
forbid train "$old"

if [ "$status" -ne 0 ]; then
  echo "check_layering: the includes above break the dependency rule (docs/architecture.md)"
else
  echo "check_layering: ok"
fi
exit "$status"
