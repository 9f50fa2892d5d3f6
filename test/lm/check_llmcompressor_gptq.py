"""Compares moeprune's GPTQ with llm-compressor's on the same model and calibration, both saved
pack-quantized, and writes llm-compressor's model decompressed by compressed-tensors itself
(0.14.0.1, scripts/compressed_tensors_python; llm-compressor saved it with its own 0.19.0).

    check_llmcompressor_gptq.py OURS REFERENCE DENSE_OUT [--max-differ 1e-3]

OURS: `moeprune quantize --format compressed-tensors` folder; REFERENCE: the folder
llmcompressor_gptq_reference.py saved. Every weight REFERENCE stores packed must be packed in OURS
with the same shape, scales equal to 1e-6 (relative), and integer codes equal except for at most
--max-differ of them (near-ties: a weight whose error-updated value lands on a rounding boundary
can round either way in fp32), none by more than 1. DENSE_OUT: REFERENCE with every packed weight
replaced by compressed-tensors' PackedQuantizationCompressor.decompress_weight of it and no
quantization_config, for transformers to compute what moeprune reads from REFERENCE.
Exits 1 naming the first difference.
"""
import argparse
import json
import os
import shutil
import sys

import torch
from compressed_tensors.compressors.quantized_compressors.pack_quantized import (
    PackedQuantizationCompressor,
    unpack_from_int32,
)
from compressed_tensors.quantization import QuantizationArgs
from safetensors.torch import load_file, save_file

PARTS = ("weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape")


def fail(message):
    sys.exit(f"FAIL: {message}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("ours")
    parser.add_argument("reference")
    parser.add_argument("dense_out")
    parser.add_argument("--max-differ", type=float, default=1e-3)
    args = parser.parse_args()
    with open(os.path.join(args.reference, "config.json")) as f:
        config = json.load(f)
    groups = config["quantization_config"]["config_groups"]
    weights_args = QuantizationArgs.model_validate(next(iter(groups.values()))["weights"])
    ours = load_file(os.path.join(args.ours, "model.safetensors"))
    ref = load_file(os.path.join(args.reference, "model.safetensors"))
    modules = sorted(k[:-len(".weight_packed")] for k in ref if k.endswith(".weight_packed"))
    if not modules:
        fail(f"{args.reference} stores no weight packed")
    total = differ = 0
    for m in modules:
        if m + ".weight_packed" not in ours:
            fail(f"{m} is packed by llm-compressor, not by moeprune")
        shape = torch.Size(ref[m + ".weight_shape"].tolist())
        if torch.Size(ours[m + ".weight_shape"].tolist()) != shape:
            fail(f"{m}: weight_shape {ours[m + '.weight_shape'].tolist()} vs {list(shape)}")
        if not torch.allclose(ours[m + ".weight_scale"].double(), ref[m + ".weight_scale"].double(),
                              rtol=1e-6, atol=0):
            fail(f"{m}: scales differ")
        a = unpack_from_int32(ours[m + ".weight_packed"], weights_args.num_bits, shape)
        b = unpack_from_int32(ref[m + ".weight_packed"], weights_args.num_bits, shape)
        if (a.int() - b.int()).abs().max() > 1:
            fail(f"{m}: codes differ by more than 1")
        total += a.numel()
        differ += int((a != b).sum())
    print(f"GPTQ codes: {differ} of {total} differ ({differ / total:.2e}) over {len(modules)} "
          f"weights; scales equal")
    if differ > args.max_differ * total:
        fail(f"more than {args.max_differ:g} of the codes differ")

    compressor = PackedQuantizationCompressor.__new__(PackedQuantizationCompressor)
    dense = {k: v for k, v in ref.items() if not any(k.endswith("." + p) for p in PARTS)}
    for m in modules:
        data = {p: ref[f"{m}.{p}"] for p in PARTS if f"{m}.{p}" in ref}
        dense[m + ".weight"] = compressor.decompress_weight(data, weights_args).contiguous()
    os.makedirs(args.dense_out)
    save_file(dense, os.path.join(args.dense_out, "model.safetensors"), metadata={"format": "pt"})
    del config["quantization_config"]
    with open(os.path.join(args.dense_out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for name in os.listdir(args.reference):
        if name not in ("model.safetensors", "config.json", "recipe.yaml"):
            shutil.copy(os.path.join(args.reference, name), args.dense_out)
    print(f"wrote {args.dense_out}: {len(modules)} weights decompressed by compressed-tensors")


if __name__ == "__main__":
    main()
