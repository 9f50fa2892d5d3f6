"""Writes a checkpoint folder in one of compressed-tensors' sparse formats with the PyPI
compressed-tensors package itself (scripts/compressed_tensors_python: 0.14.0.1), from a dense
folder whose expert weights are sparse: moeprune must read what the package writes, not only
what moeprune writes.

    make_compressed_tensors_sparse.py DENSE OUT FORMAT

FORMAT is sparse-bitmask (any zeros) or sparse-24-bitmask (2:4). Every expert weight
(`...experts.N.PROJ.weight`) is compressed by the package's compressor; config.json gets the
quantization_config its ModelCompressor writes; the other files are copied.
"""

import re
import shutil
import sys
from pathlib import Path

from compressed_tensors.compressors import BaseCompressor, ModelCompressor
from compressed_tensors.config import SparsityCompressionConfig
from safetensors.torch import save_file

sys.dont_write_bytecode = True  # no __pycache__ in the source tree for the import below
from check_sparse_experts import tensors  # noqa: E402 (next to this file)

EXPERT = re.compile(r"^(.*\.experts\.\d+\.(w1|w2|w3|gate_proj|up_proj|down_proj))\.weight$")


def main():
    dense_dir, out_dir, fmt = sys.argv[1:4]
    state = tensors(dense_dir)
    modules = sorted(m.group(1) for m in map(EXPERT.match, state) if m)
    if not modules:
        sys.exit(f"{dense_dir}: no expert weight")
    config = SparsityCompressionConfig.load_from_registry(fmt, targets=modules)
    compressor = BaseCompressor.load_from_registry(fmt, config=config)
    compressed = compressor.compress(state, compression_targets=set(modules))
    out = Path(out_dir)
    out.mkdir()
    for f in Path(dense_dir).iterdir():
        if f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy(f, out / f.name)
    save_file({k: v.contiguous() for k, v in compressed.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    ModelCompressor(sparsity_config=config).update_config(str(out))
    print(f"{len(modules)} expert weights written as {fmt} by compressed-tensors")


if __name__ == "__main__":
    main()
