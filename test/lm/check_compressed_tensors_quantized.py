"""Checks a `moeprune quantize --format compressed-tensors` folder against the same run written
dense, with the PyPI compressed-tensors package (0.14.0.1, scripts/compressed_tensors_python).

    check_compressed_tensors_quantized.py DENSE PACKED [--expect N]

- PACKED's quantization_config validates as compressed-tensors' QuantizationConfig, with one
  pack-quantized config group;
- every weight PACKED stores as X.weight_packed (and X.weight_scale, X.weight_shape, and as the
  scheme needs X.weight_zero_point, X.weight_g_idx) decompresses, with compressed-tensors'
  PackedQuantizationCompressor, to DENSE's X.weight exactly, and its compressor on DENSE's weight
  with our scales and zero points gives our words;
- the config's targets and ignore list select exactly the modules stored packed
  (compressed-tensors' own is_match on each module name as a Linear), and every other tensor
  equals DENSE's;
- with --expect N: N weights are stored packed.
Exits 1 naming the first difference.
"""
import argparse
import json
import os
import sys

import torch
from compressed_tensors.compressors.quantized_compressors.pack_quantized import (
    PackedQuantizationCompressor,
    unpack_from_int32,
)
from compressed_tensors.quantization import QuantizationConfig
from compressed_tensors.utils import is_match
from safetensors.torch import load_file

PARTS = ("weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape")


def fail(message):
    sys.exit(f"FAIL: {message}")


class Named(torch.nn.Linear):
    """A stand-in module for compressed-tensors' name matching (it also matches class names)."""

    def __init__(self):
        torch.nn.Module.__init__(self)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dense")
    parser.add_argument("packed")
    parser.add_argument("--expect", type=int)
    args = parser.parse_args()
    with open(os.path.join(args.packed, "config.json")) as f:
        config = QuantizationConfig.model_validate(json.load(f)["quantization_config"])
    if config.format != "pack-quantized" or len(config.config_groups) != 1:
        fail(f"expected one pack-quantized config group, got {config.format}, "
             f"{list(config.config_groups)}")
    scheme = next(iter(config.config_groups.values()))
    weights_args = scheme.weights
    dense = load_file(os.path.join(args.dense, "model.safetensors"))
    packed = load_file(os.path.join(args.packed, "model.safetensors"))
    modules = sorted(n[:-len(".weight_packed")] for n in packed if n.endswith(".weight_packed"))
    compressor = PackedQuantizationCompressor.__new__(PackedQuantizationCompressor)
    module = Named()
    for m in modules:
        data = {p: packed[f"{m}.{p}"] for p in PARTS if f"{m}.{p}" in packed}
        want = dense[m + ".weight"]
        back = compressor.decompress_weight(dict(data), weights_args)  # it replaces parts
        if back.dtype != want.dtype or not torch.equal(back, want):
            fail(f"{m}: compressed-tensors decompresses to other weights than the dense run's "
                 f"(max diff {(back.double() - want.double()).abs().max():.3g})")
        zero = None
        if "weight_zero_point" in data:
            groups = data["weight_scale"].shape[1]
            zero = unpack_from_int32(data["weight_zero_point"], weights_args.num_bits,
                                     torch.Size((want.shape[0], groups)), packed_dim=0)
        again = compressor.compress_weight(want, data["weight_scale"], weights_args,
                                           zero_point=zero, g_idx=data.get("weight_g_idx"))
        if not torch.equal(again["weight_packed"], data["weight_packed"]):
            fail(f"{m}: compressed-tensors' compressor gives other words for the dense weight")
        if not is_match(m, module, scheme.targets, config.ignore):
            fail(f"{m} is stored packed but the config's targets and ignore list skip it")
    for name, tensor in dense.items():
        m = name[:-len(".weight")] if name.endswith(".weight") else None
        if m in modules:
            continue
        if name not in packed or not torch.equal(packed[name], tensor):
            fail(f"{name}: not quantised, yet the folders differ there")
        if m is not None and tensor.dim() == 2 and is_match(m, module, scheme.targets,
                                                            config.ignore):
            fail(f"{m} is not stored packed but the config selects it")
    if args.expect is not None and len(modules) != args.expect:
        fail(f"{len(modules)} weights stored packed, expected {args.expect}")
    print(f"ok: {len(modules)} pack-quantized weights ({weights_args.num_bits}-bit, "
          f"{weights_args.strategy}, symmetric={weights_args.symmetric}, "
          f"actorder={weights_args.actorder}) decompress to the dense run's weights")


if __name__ == "__main__":
    main()
