"""Checks a sparse-24-bitmask checkpoint folder (moeprune sparsify --format compressed-tensors)
against the dense folder of the same run, with the PyPI compressed-tensors package
(scripts/compressed_tensors_python: 0.14.0.1, the last release with the sparse compressors).

    check_compressed_tensors_sparse.py DENSE SPARSE

- compressed-tensors reads SPARSE's quantization_config as sparse-24-bitmask;
- for every module X stored as X.compressed/X.bitmask/X.shape, compressed-tensors' decompressor
  gives DENSE's X.weight exactly (values and dtype), and, where every group of four of that
  weight holds two non-zeros (so the kept positions are not a choice among zeros), its
  compressor applied to DENSE's X.weight gives our bytes exactly;
- every other tensor equals DENSE's, and no tensor is missing or extra.
Exits 1 on the first problem, naming the tensor.
"""

import sys

import torch
from compressed_tensors.compressors import ModelCompressor
from compressed_tensors.compressors.sparse_compressors.sparse_24_bitmask import (
    Sparse24BitMaskTensor,
    sparse24_bitmask_compress,
)

sys.dont_write_bytecode = True  # no __pycache__ in the source tree for the import below
from check_sparse_experts import tensors  # noqa: E402 (next to this file)

PARTS = ("compressed", "bitmask", "shape")


def main():
    dense_dir, sparse_dir = sys.argv[1:3]
    compressor = ModelCompressor.from_pretrained(sparse_dir)
    if compressor is None or compressor.sparsity_config is None:
        sys.exit(f"{sparse_dir}: compressed-tensors finds no sparsity config")
    if compressor.sparsity_config.format != "sparse-24-bitmask":
        sys.exit(f"sparsity format {compressor.sparsity_config.format}")
    dense, sparse = tensors(dense_dir), tensors(sparse_dir)
    modules = sorted(n[: -len(".compressed")] for n in sparse if n.endswith(".compressed"))
    if not modules:
        sys.exit("no sparse-24-bitmask module found")
    expected = set(dense) - {m + ".weight" for m in modules}
    expected |= {f"{m}.{p}" for m in modules for p in PARTS}
    if set(sparse) != expected:
        sys.exit(f"tensor names differ from the dense folder's: {sorted(set(sparse) ^ expected)[:6]}")
    same_bytes = 0
    for m in modules:
        w = dense[m + ".weight"]
        data = {p: sparse[f"{m}.{p}"] for p in PARTS}
        if data["shape"].dtype != torch.int64 or data["bitmask"].dtype != torch.uint8:
            sys.exit(f"{m}: shape {data['shape'].dtype}, bitmask {data['bitmask'].dtype}")
        back = Sparse24BitMaskTensor.from_compressed_data(**data).decompress()
        if back.dtype != w.dtype or not torch.equal(back, w):
            sys.exit(f"{m}: compressed-tensors decompresses to other weights than the dense run's")
        if torch.all((w.reshape(-1, 4) != 0).sum(1) == 2):
            values, bitmask = sparse24_bitmask_compress(w)
            if not (torch.equal(values, data["compressed"]) and torch.equal(bitmask, data["bitmask"])):
                sys.exit(f"{m}: compressed-tensors compresses the dense weight to other bytes")
            same_bytes += 1
    if same_bytes == 0:
        sys.exit("no weight with two non-zeros in every group: the byte comparison checked nothing")
    for name in set(sparse) & set(dense):
        if sparse[name].dtype != dense[name].dtype or not torch.equal(sparse[name], dense[name]):
            sys.exit(f"{name}: differs from the dense folder's")
    print(f"{len(modules)} sparse-24-bitmask weights decompress to the dense run's "
          f"({same_bytes} compared byte for byte with compressed-tensors' compressor)")


if __name__ == "__main__":
    main()
