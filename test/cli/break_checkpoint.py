"""Writes a broken copy of a checkpoint folder, one fault at a time, for the inspect --check test.

    break_checkpoint.py SOURCE OUT FAULT

FAULT: top_k (num_experts_per_tok = experts + 1), head_dim (a head_dim the attention tensors do
not have), rope (an unsupported rope_scaling type), no_embedding (model.embed_tokens.weight
renamed, same length, so the file stays valid), extra_tensor (one more tensor appended).
Standard library only: safetensors is an 8-byte header length, a JSON header, then the data.
"""

import json
import shutil
import struct
import sys
from pathlib import Path


def edit_config(out, change):
    path = out / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config, indent=1))


def edit_tensors(out, change):
    path = out / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = bytearray(raw[8 + n:])
    change(header, data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(data))


def main(source, out, fault):
    source, out = Path(source), Path(out)
    shutil.copytree(source, out)
    if fault == "top_k":
        edit_config(out, lambda c: c.update(
            num_experts_per_tok=c.get("num_local_experts", c.get("num_experts", 8)) + 1))
    elif fault == "head_dim":
        edit_config(out, lambda c: c.update(head_dim=c["hidden_size"] // c["num_attention_heads"] * 2))
    elif fault == "rope":
        edit_config(out, lambda c: c.update(rope_scaling={"rope_type": "longrope", "factor": 2.0}))
    elif fault == "no_embedding":
        def rename(header, data):
            header["model.embed_tokens.weigxt"] = header.pop("model.embed_tokens.weight")
        edit_tensors(out, rename)
    elif fault == "extra_tensor":
        def extra(header, data):
            begin = len(data)
            data.extend(struct.pack("<4f", 1, 2, 3, 4))
            header["model.layers.0.extra.weight"] = {
                "dtype": "F32", "shape": [4], "data_offsets": [begin, begin + 16]}
        edit_tensors(out, extra)
    else:
        raise SystemExit(f"unknown fault {fault}")


if __name__ == "__main__":
    main(*sys.argv[1:])
