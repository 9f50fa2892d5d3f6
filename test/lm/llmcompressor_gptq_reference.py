"""Quantises the experts of a Qwen3-MoE checkpoint with llm-compressor's GPTQ (a second,
independent implementation) and saves the result compressed (pack-quantized), as the reference
for `moeprune quantize --method gptq`.

    scripts/llmcompressor_python test/lm/llmcompressor_gptq_reference.py MODEL_DIR TOKENS OUT \
        --bits 4 --group-size 16

MODEL_DIR: a Qwen3-MoE checkpoint in transformers 4.x's per-expert layout (make_qwen3_moe_tiny.py).
TOKENS: a safetensors file with one int64 tensor "input_ids" [N, S]; each sequence whole, one per
    forward pass.
OUT: the folder llm-compressor's save_pretrained(save_compressed=True) writes.

What llm-compressor 0.14.0.1 does here (read from its source, modifiers/gptq): the experts are
linearized (one nn.Linear per expert and projection; see llmcompressor_reference.py) and each is
calibrated on its routed tokens (moe_calibrate_all_experts=False), every layer on the unquantised
model ("basic" pipeline). GPTQModifier's default actorder is "static": columns taken by decreasing
Hessian diagonal, each group's scale and zero point fixed from the original weights by the minmax
observer before the pass (moeprune's --act-order --static-groups), dampening 0.01, blocks of 128.
Exits 1 when loading reports missing/unexpected keys.
"""
import argparse
import os
import sys

os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from llmcompressor import oneshot  # noqa: E402
from llmcompressor.modeling.moe.linearize import linearize_moe  # noqa: E402
from llmcompressor.modifiers.gptq import GPTQModifier  # noqa: E402

EXPERT_LINEAR = r"re:.*\.mlp\.experts\.\d+\.(gate|up|down)_proj$"


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("tokens")
    parser.add_argument("out")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=16)
    args = parser.parse_args()

    ids = load_file(args.tokens)["input_ids"]
    if ids.dtype != torch.int64 or ids.dim() != 2:
        fail(f"{args.tokens}: input_ids must be int64 [N, S], got {ids.dtype} {list(ids.shape)}")
    model, info = AutoModelForCausalLM.from_pretrained(
        args.model_dir, dtype=torch.float32, output_loading_info=True)
    problems = {k: v for k, v in info.items() if k != "error_msgs" and v}
    if problems:
        fail(f"loading {args.model_dir}: {problems}")
    model.eval()
    linearize_moe(model)
    dataset = Dataset.from_dict({"input_ids": ids.tolist(),
                                 "attention_mask": torch.ones_like(ids).tolist()})
    scheme = {"targets": [EXPERT_LINEAR],
              "weights": {"num_bits": args.bits, "type": "int", "symmetric": True,
                          "strategy": "group", "group_size": args.group_size}}
    recipe = GPTQModifier(config_groups={"group_0": scheme}, ignore=[])
    oneshot(model=model, recipe=recipe, dataset=dataset,
            num_calibration_samples=ids.shape[0], max_seq_length=ids.shape[1], batch_size=1,
            shuffle_calibration_samples=False, pipeline="basic", moe_calibrate_all_experts=False)
    model.save_pretrained(args.out, save_compressed=True)
    print(f"llm-compressor GPTQ W{args.bits} g{args.group_size}: saved {args.out}")


if __name__ == "__main__":
    main()
