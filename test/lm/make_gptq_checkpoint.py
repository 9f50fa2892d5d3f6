"""Stores the expert weights of a checkpoint folder in the GPTQ layout (AutoGPTQ / GPTQModel's
"gptq" checkpoint_format, as their QuantLinear.pack writes it), and the same weights dense, for
the GPTQ-layout reading test.

    scripts/hf_python 4.57.6 test/lm/make_gptq_checkpoint.py SRC_DIR OUT_DIR DENSE_DIR \
        --bits 4 --group-size 16 [--desc-act]

Written from the format as GPTQModel documents and implements it (not by that package, which
needs a GPU build): each expert weight W [out, in] is quantised round-to-nearest with GPTQ's
symmetric quantiser (per group of inputs: scale = 2 max|w| / (2^b - 1), zero = 2^(b-1), codes
q = clamp(round(w / scale) + zero, 0, 2^b - 1)), and stored as
  X.qweight int32 [in * b / 32, out]: codes packed down each column, input i at bits
            b * (i % (32 / b)) of word i / (32 / b);
  X.qzeros  int32 [groups, out * b / 32]: zero - 1 packed the same way along each row;
  X.scales  fp16 [groups, out];
  X.g_idx   int32 [in]: each input's group; with --desc-act, groups of inputs in a shuffled order
            (what act-order writes), else i / group_size.
DENSE_DIR gets fp16(scale * (q - zero)) for each weight (GPTQModel's dequantize_weight, in fp16)
in place of the original, everything else as it was. Deterministic; needs torch and safetensors.
"""
import argparse
import json
import os
import re
import shutil

import torch
from safetensors.torch import load_file, save_file

EXPERT = re.compile(r".*\.experts\.\d+\.\w+\.weight$")


def pack_down_columns(values, bits):
    """values [n, cols] unsigned -> int32 [n * bits / 32, cols]."""
    per_word = 32 // bits
    v = values.to(torch.int64).reshape(-1, per_word, values.shape[1])
    words = torch.zeros(v.shape[0], values.shape[1], dtype=torch.int64)
    for j in range(per_word):
        words |= v[:, j, :] << (bits * j)
    return words.to(torch.uint32).view(torch.int32) if hasattr(torch, "uint32") else \
        torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def quantize(w, bits, group_size, desc_act, generator):
    out_features, in_features = w.shape
    groups = in_features // group_size
    if desc_act:
        order = torch.randperm(in_features, generator=generator)
        g_idx = torch.empty(in_features, dtype=torch.int32)
        g_idx[order] = (torch.arange(in_features) // group_size).to(torch.int32)
    else:
        g_idx = (torch.arange(in_features) // group_size).to(torch.int32)
    maxq = 2**bits - 1
    scales = torch.zeros(groups, out_features)
    for g in range(groups):
        cols = w[:, g_idx == g].float()
        scales[g] = (2 * cols.abs().amax(1) / maxq).clamp_min(1e-8)
    scales = scales.half()
    zero = 2 ** (bits - 1)
    s = scales.float()[g_idx.long()].t()  # [out, in]
    q = torch.clamp(torch.round(w.float() / s) + zero, 0, maxq).to(torch.int64)
    qweight = pack_down_columns(q.t(), bits)
    zeros = torch.full((groups, out_features), zero - 1, dtype=torch.int64)
    qzeros = pack_down_columns(zeros.t(), bits).t().contiguous()
    dense = (scales[g_idx.long()].t() * (q - zero).half()).contiguous()
    return {"qweight": qweight, "qzeros": qzeros, "scales": scales, "g_idx": g_idx}, dense


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src")
    parser.add_argument("out")
    parser.add_argument("dense")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=16)
    parser.add_argument("--desc-act", action="store_true")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(7)
    tensors = load_file(os.path.join(args.src, "model.safetensors"))
    packed, dense, count = {}, {}, 0
    for name, t in sorted(tensors.items()):
        if EXPERT.match(name) and t.dim() == 2:
            parts, w = quantize(t, args.bits, args.group_size, args.desc_act, generator)
            module = name[:-len(".weight")]
            for part, value in parts.items():
                packed[f"{module}.{part}"] = value
            dense[name] = w
            count += 1
        else:
            packed[name] = dense[name] = t
    with open(os.path.join(args.src, "config.json")) as f:
        config = json.load(f)
    for folder, weights, quantised in ((args.out, packed, True), (args.dense, dense, False)):
        shutil.copytree(args.src, folder)
        save_file(weights, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        c = dict(config)
        if quantised:
            c["quantization_config"] = {"quant_method": "gptq", "bits": args.bits,
                                        "group_size": args.group_size, "desc_act": args.desc_act,
                                        "sym": True, "checkpoint_format": "gptq"}
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(c, f, indent=2)
    print(f"wrote {args.out} ({count} expert weights in the GPTQ layout, {args.bits}-bit, groups "
          f"of {args.group_size}{', desc_act' if args.desc_act else ''}) and {args.dense}")


if __name__ == "__main__":
    main()
