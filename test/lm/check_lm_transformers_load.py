"""Loads a causal-LM checkpoint folder with transformers and checks its logits against a reference.

    check_lm_transformers_load.py DIR REFERENCE.safetensors [--tol 1e-5]

DIR is loaded with AutoModelForCausalLM (fp32, attn_implementation "sdpa", as the fixtures were
made); model_type "deepseek" (the hub's remote-code DeepSeek-MoE) with the model in
deepseek_reference.py next to this file, which needs transformers 4.x. REFERENCE holds
"input_ids" [B, T] and "logits" [B, T, V] (scripts/make_lm_fixtures.py writes such files). Exits 1
on any missing, unexpected or mis-shaped weight (transformers would otherwise initialise missing
ones at random with only a warning) or when max |logits - reference| > tol; prints the max diff.
"""

import argparse
import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file

sys.dont_write_bytecode = True  # no __pycache__ next to deepseek_reference.py
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def load(directory):
    """(model, problems): problems maps a loading-info kind to its non-empty key list."""
    with open(os.path.join(directory, "config.json")) as f:
        model_type = json.load(f).get("model_type")
    if model_type == "deepseek":
        import deepseek_reference
        try:
            return deepseek_reference.load(directory), {}
        except ValueError as e:
            return None, {"load": str(e)}
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        directory, output_loading_info=True, dtype=torch.float32, attn_implementation="sdpa")
    problems = {k: v for k, v in info.items()
                if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    return model.eval(), problems


def logits_of(model, input_ids):
    with torch.no_grad():
        if isinstance(model, transformers.PreTrainedModel):
            return model(input_ids=input_ids, use_cache=False).logits.float()
        return model(input_ids).float()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("reference")
    parser.add_argument("--tol", type=float, default=1e-5)
    args = parser.parse_args()

    try:
        model, problems = load(args.directory)
    except Exception as e:  # e.g. a fused folder under 4.x: shapes transformers cannot place
        print(f"FAIL: transformers {transformers.__version__} cannot load {args.directory}: "
              f"{type(e).__name__}: {e}")
        return 1
    if problems:
        print(f"FAIL: transformers {transformers.__version__} loading {args.directory}: {problems}")
        return 1
    reference = load_file(args.reference)
    want = reference["logits"]
    got = logits_of(model, reference["input_ids"])
    if got.shape != want.shape:
        print(f"FAIL: logits shape {tuple(got.shape)}, reference {tuple(want.shape)}")
        return 1
    diff = (got - want).abs().max().item()
    if not diff <= args.tol:  # also catches NaN
        print(f"FAIL: {args.directory}: max |logits - reference| = {diff:.3g} > {args.tol:g}")
        return 1
    print(f"ok: transformers {transformers.__version__} loads {args.directory}; "
          f"max |logits - reference| = {diff:.3g} (tol {args.tol:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
