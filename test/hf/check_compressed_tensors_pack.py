"""Checks moeprune's RTN quantisation and pack-quantized encoding against the PyPI
compressed-tensors package (0.14.0.1, scripts/compressed_tensors_python).

    check_compressed_tensors_pack.py SAMPLES.safetensors

SAMPLES: written by moeprune_tests "[.ct_pack_export]": for 4 and 8 bits, symmetric and not,
group 16, a random weight [24, 64] with moeprune's codes, zero points, dequantised weight and
pack-quantized tensors. For each: compressed-tensors' calculate_qparams on the weight's groups
gives our scales and zero points, its pack_to_int32 on our codes and zero points gives our words,
and its PackedQuantizationCompressor.decompress_weight on our tensors gives our dequantised
weight exactly. Exits 1 naming the first difference.
"""
import sys

import torch
from compressed_tensors.compressors.quantized_compressors.pack_quantized import (
    PackedQuantizationCompressor,
    pack_to_int32,
)
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.utils import calculate_qparams
from safetensors.torch import load_file

GROUP = 16


def main():
    t = load_file(sys.argv[1])
    checked = 0
    for bits in (4, 8):
        for symmetric in (True, False):
            k = f"w{bits}_{'sym' if symmetric else 'asym'}."
            args = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric,
                                    strategy="group", group_size=GROUP)
            w = t[k + "weight"]
            rows, cols = w.shape
            grouped = w.reshape(rows, cols // GROUP, GROUP)
            scale, zero = calculate_qparams(grouped.amin(-1), grouped.amax(-1), args)
            if not torch.equal(scale, t[k + "weight_scale"]):
                sys.exit(f"{k}: scales differ by {(scale - t[k + 'weight_scale']).abs().max()}")
            if not torch.equal(zero.to(torch.int8), t[k + "zeros"]):
                sys.exit(f"{k}: zero points differ from calculate_qparams'")
            if not torch.equal(pack_to_int32(t[k + "codes"], bits), t[k + "weight_packed"]):
                sys.exit(f"{k}: weight_packed differs from pack_to_int32 of our codes")
            data = {n: t[k + n] for n in ("weight_packed", "weight_scale", "weight_shape")}
            if not symmetric:
                ours = t[k + "weight_zero_point"]
                if not torch.equal(pack_to_int32(t[k + "zeros"], bits, packed_dim=0), ours):
                    sys.exit(f"{k}: weight_zero_point differs from pack_to_int32(packed_dim=0)")
                data["weight_zero_point"] = ours
            compressor = PackedQuantizationCompressor.__new__(PackedQuantizationCompressor)
            back = compressor.decompress_weight(data, args)
            if not torch.equal(back.to(torch.float32), t[k + "dequantized"]):
                sys.exit(f"{k}: compressed-tensors decompresses to other weights")
            checked += 1
    print(f"{checked} pack-quantized samples: qparams, words and decompression equal "
          "compressed-tensors'")


if __name__ == "__main__":
    main()
