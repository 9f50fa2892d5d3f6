"""Stores a checkpoint folder's linear weights in block-scaled FP8, as DeepSeek-V3/R1 and Kimi-K2
ship theirs, for the FP8 reading test.

    scripts/hf_python 5.24.0 test/lm/make_fp8_checkpoint.py SRC_DIR OUT_DIR --block 4 4

Every 2-D weight of an attention or MLP projection (self_attn.*_proj, mlp.*_proj, the experts'
and shared experts' included; not the router mlp.gate, the embeddings, the LM head or the norms,
which DeepSeek-V3 keeps in high precision) becomes float8_e4m3fn X.weight with
X.weight_scale_inv [ceil(out / bo), ceil(in / bi)] in fp32: each block's scale is its largest
|w| / 448 (DeepSeek-V3's quantisation, e4m3's largest finite value 448), the weight w / scale
rounded to e4m3 by torch. config.json gets quantization_config {"quant_method": "fp8", "fmt":
"e4m3", "activation_scheme": "dynamic", "weight_block_size": [bo, bi]}. Needs torch and
safetensors only; deterministic.
"""
import argparse
import json
import os
import re
import shutil

import torch
from safetensors.torch import load_file, save_file

PROJECTION = re.compile(r".*\.(self_attn|mlp)\..*_proj\.weight$")


def quantize(w, bo, bi):
    rows, cols = w.shape
    br, bc = -(-rows // bo), -(-cols // bi)
    padded = torch.zeros(br * bo, bc * bi, dtype=torch.float32)
    padded[:rows, :cols] = w.float()
    blocks = padded.reshape(br, bo, bc, bi)
    scale = blocks.abs().amax(dim=(1, 3)) / 448.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = (blocks / scale[:, None, :, None]).reshape(br * bo, bc * bi)[:rows, :cols]
    return q.to(torch.float8_e4m3fn).contiguous(), scale.contiguous()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src")
    parser.add_argument("out")
    parser.add_argument("--block", type=int, nargs=2, default=(128, 128))
    args = parser.parse_args()
    bo, bi = args.block
    shutil.copytree(args.src, args.out)
    tensors = load_file(os.path.join(args.src, "model.safetensors"))
    out, converted = {}, 0
    for name, t in tensors.items():
        if PROJECTION.match(name) and t.dim() == 2:
            out[name], out[name + "_scale_inv"] = quantize(t, bo, bi)
            converted += 1
        else:
            out[name] = t
    save_file(out, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(args.src, "config.json")) as f:
        config = json.load(f)
    config["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3",
                                     "quant_method": "fp8", "weight_block_size": [bo, bi]}
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(f"wrote {args.out}: {converted} weights in FP8, blocks of {bo} x {bi}")


if __name__ == "__main__":
    main()
