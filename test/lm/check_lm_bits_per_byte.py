"""Bits per byte of a byte-level checkpoint under transformers, against moeprune's lm_eval.

    check_lm_bits_per_byte.py DIR TOKENS OURS.json [--context 256] [--tol 1e-4]

DIR is loaded with AutoModelForCausalLM (fp32, attn_implementation "sdpa"); TOKENS holds the
whitespace-separated token ids lm_eval --save-tokens wrote (ids 0-255 are bytes, 256 ends a
fortune). The windows are the ones docs/language_models.md describes for lm::perplexity with
stride = context: `context` tokens each, each starting one token before the first token not yet
scored, so every token after the first is scored once. Bits per byte = the summed NLL / ln 2 over
the bytes among the scored tokens. Exits 1 on a missing, unexpected or mis-shaped weight, when the
token counts differ, or when |bits per byte - OURS.json's| > tol; prints both.
"""

import argparse
import json
import math
import sys

import torch
import transformers


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("tokens")
    parser.add_argument("ours")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args()

    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        args.directory, output_loading_info=True, dtype=torch.float32, attn_implementation="sdpa")
    problems = {k: v for k, v in info.items()
                if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        print(f"loading problems: {problems}")
        return 1
    model.eval()
    with open(args.tokens) as f:
        ids = torch.tensor([int(t) for t in f.read().split()], dtype=torch.long)
    with open(args.ours) as f:
        ours = json.load(f)

    n, context = ids.numel(), args.context
    nll, scored, scored_until, begin = 0.0, 0, 1, 0
    with torch.no_grad():
        while scored_until < n:
            end = min(begin + context, n)
            window = ids[begin:end].unsqueeze(0)
            logits = model(window).logits[0, :-1].float()
            token_nll = -logits.log_softmax(-1).gather(-1, window[0, 1:, None])[:, 0]
            fresh = token_nll[scored_until - (begin + 1):]
            nll += fresh.double().sum().item()
            scored += fresh.numel()
            scored_until = end
            begin = min(begin + context, scored_until - 1)
    byte_count = int((ids[1:] < 256).sum())
    bpb = nll / math.log(2) / byte_count
    print(f"transformers {transformers.__version__}: {scored} tokens, {bpb:.6f} bits per byte; "
          f"moeprune: {ours['tokens']} tokens, {ours['bits_per_byte']:.6f}; "
          f"difference {abs(bpb - ours['bits_per_byte']):.2e}")
    if scored != ours["tokens"]:
        print("the scored token counts differ")
        return 1
    return 0 if abs(bpb - ours["bits_per_byte"]) <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
