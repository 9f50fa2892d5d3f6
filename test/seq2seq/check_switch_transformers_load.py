"""Loads a Switch Transformers folder written by moeprune with transformers and checks its logits.

    check_switch_transformers_load.py DIR OURS.safetensors [--tol 1e-5]

OURS holds moeprune's "input_ids", "attention_mask", "decoder_input_ids" and "logits"
(test/seq2seq/switch_logits). Exits 1 on any missing, unexpected or mis-shaped weight
(transformers would initialise missing ones at random with only a warning) or when
max |logits - ours| > tol; prints the max diff.
"""

import argparse
import sys

import torch
import transformers
from safetensors.torch import load_file


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("ours")
    parser.add_argument("--tol", type=float, default=1e-5)
    args = parser.parse_args()
    model, info = transformers.SwitchTransformersForConditionalGeneration.from_pretrained(
        args.directory, output_loading_info=True, dtype=torch.float32)
    problems = {k: v for k, v in info.items()
                if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        print(f"{args.directory}: {problems}")
        return 1
    ours = load_file(args.ours)
    with torch.no_grad():
        logits = model.eval()(input_ids=ours["input_ids"], attention_mask=ours["attention_mask"],
                              decoder_input_ids=ours["decoder_input_ids"]).logits.float()
    diff = float((logits - ours["logits"].float()).abs().max())
    print(f"{args.directory}: max |transformers - moeprune| = {diff:.3g}")
    return 0 if diff <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
