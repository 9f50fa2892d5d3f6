"""Checks the expert weights of a sparsified checkpoint folder against its source, independently
of moeprune (PyTorch and the safetensors package only).

    check_sparse_experts.py OUT SOURCE PATTERN

PATTERN is a fraction (0.5: every row of every expert weight [out, in] has int(in * 0.5) zeros)
or N:M (every group of M consecutive inputs of a row has M - N zeros). Expert tensors that are all
zero in SOURCE (experts pruned with the router kept) must stay all zero; every other tensor must
equal SOURCE's bit for bit, and the kept expert weights must be non-zero. Exits 1 on the first
problem, naming the tensor.
"""

import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

EXPERT = re.compile(r"\.experts\.\d+\.(w1|w2|w3|gate_proj|up_proj|down_proj)\.weight$")


def tensors(folder):
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def main():
    out_dir, source_dir, pattern = sys.argv[1:4]
    out, source = tensors(out_dir), tensors(source_dir)
    if set(out) != set(source):
        sys.exit(f"tensor names differ: {sorted(set(out) ^ set(source))[:5]}")
    experts = 0
    for name, w in out.items():
        s = source[name]
        if not EXPERT.search(name) or not s.any():
            if w.dtype != s.dtype or not torch.equal(w, s):
                sys.exit(f"{name}: changed, but it is not an expert weight of the source")
            continue
        experts += 1
        zero = w == 0
        if ":" in pattern:
            n, m = (int(x) for x in pattern.split(":"))
            per_group = zero.reshape(w.shape[0], -1, m).sum(-1)
            if not torch.all(per_group == m - n):
                sys.exit(f"{name}: groups of {m} with {per_group.min()}..{per_group.max()} zeros, "
                         f"expected {m - n}")
        else:
            k = int(w.shape[1] * float(pattern))
            per_row = zero.sum(1)
            if not torch.all(per_row == k):
                sys.exit(f"{name}: rows with {per_row.min()}..{per_row.max()} zeros, expected {k}")
        if torch.any((s == 0) & ~zero):
            sys.exit(f"{name}: a weight zero in the source is non-zero")
    if experts == 0:
        sys.exit("no sparsified expert weight found")
    print(f"{experts} expert weights at {pattern}; every other tensor unchanged")


if __name__ == "__main__":
    main()
