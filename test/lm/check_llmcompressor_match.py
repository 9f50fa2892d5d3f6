"""Compares moeprune's sparsified experts with llm-compressor's on the same model and tokens.

    check_llmcompressor_match.py MOEPRUNE_DIR LLMCOMPRESSOR.safetensors --method wanda|sparsegpt
        [--max-mismatch 1e-4] [--rtol 1e-4]

MOEPRUNE_DIR: the folder `moeprune sparsify` wrote (per-expert layout, [out, in]);
LLMCOMPRESSOR.safetensors: test/lm/llmcompressor_reference.py's output (every expert weight,
same names). Wanda keeps weights unchanged, so the two must be equal bit for bit (the same
zeros). SparseGPT updates the kept weights in fp32 along a different order of operations: the
zero positions may differ at near-ties (at most --max-mismatch of the weights) and the weights
where both keep them must agree within --rtol of the tensor's largest value. Prints the figures;
exits 1 naming the first tensor out of bounds.
"""
import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("ours")
    parser.add_argument("theirs")
    parser.add_argument("--method", required=True, choices=["wanda", "sparsegpt"])
    parser.add_argument("--max-mismatch", type=float, default=1e-4)
    parser.add_argument("--rtol", type=float, default=1e-4)
    args = parser.parse_args()
    ours = {}
    for f in sorted(Path(args.ours).glob("*.safetensors")):
        ours.update(load_file(str(f)))
    theirs = load_file(args.theirs)
    if not theirs:
        sys.exit("no weights in " + args.theirs)
    total = mismatched = 0
    worst = 0.0
    for name, t in sorted(theirs.items()):
        if name not in ours:
            sys.exit(f"{name}: not in {args.ours}")
        o = ours[name].to(torch.float32)
        if o.shape != t.shape:
            sys.exit(f"{name}: {tuple(o.shape)} here, {tuple(t.shape)} in llm-compressor's")
        total += t.numel()
        if args.method == "wanda":
            if not torch.equal(o, t):
                n = int((o != t).sum())
                sys.exit(f"{name}: {n} of {t.numel()} weights differ (Wanda must match exactly)")
            continue
        differ = (o == 0) != (t == 0)
        mismatched += int(differ.sum())
        both = (o != 0) & (t != 0)
        scale = float(t.abs().max())
        if both.any():
            worst = max(worst, float((o - t)[both].abs().max()) / scale)
    if args.method == "wanda":
        print(f"wanda: {total} weights, identical to llm-compressor's")
        return
    share = mismatched / total
    print(f"sparsegpt: {total} weights, zero positions differ at {mismatched} "
          f"({share:.2e}), largest difference of kept weights {worst:.2e} of the tensor's max")
    if share > args.max_mismatch:
        sys.exit(f"zero positions differ at {share:.2e} of the weights (allowed {args.max_mismatch})")
    if worst > args.rtol:
        sys.exit(f"kept weights differ by {worst:.2e} of the tensor's max (allowed {args.rtol})")


if __name__ == "__main__":
    main()
