"""Loads a checkpoint folder written by `moeprune prune` with transformers and checks that its MoE
blocks give the outputs moeprune's own layers gave (written by test/hf/moe_outputs).

    check_transformers_load.py PRUNED_DIR OURS.safetensors EXPECTED_EXPERTS

OURS holds "<block prefix>.input" and "<block prefix>.output" for every MoE block. Exits 1 on any
mismatch, on missing or unexpected weights (transformers would otherwise initialise missing
experts at random with only a warning), or when the model has another expert count.
"""

import sys

import torch
import transformers
from safetensors.torch import load_file


def moe_blocks(model):
    if hasattr(model, "encoder"):  # Switch Transformers
        for stack_name, stack in (("encoder", model.encoder), ("decoder", model.decoder)):
            for i, block in enumerate(stack.block):
                ff = block.layer[-1]
                if getattr(ff, "is_sparse", False):
                    yield f"{stack_name}.block.{i}.layer.{len(block.layer) - 1}.mlp", ff.mlp
    else:
        for i, layer in enumerate(model.model.layers):
            if hasattr(layer, "block_sparse_moe"):
                yield f"model.layers.{i}.block_sparse_moe", layer.block_sparse_moe
            else:
                yield f"model.layers.{i}.mlp", layer.mlp


def main():
    directory, ours_path, expected_experts = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = transformers.AutoConfig.from_pretrained(directory)
    cls = (transformers.SwitchTransformersForConditionalGeneration
           if config.model_type == "switch_transformers" else transformers.MixtralForCausalLM)
    model, info = cls.from_pretrained(directory, output_loading_info=True)
    model.eval()
    problems = {k: v for k, v in info.items() if v and k in
                ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        print(f"FAIL: transformers {transformers.__version__} loading {directory}: {problems}")
        return 1
    experts = getattr(config, "num_local_experts", None) or config.num_experts
    if experts != expected_experts:
        print(f"FAIL: config has {experts} experts, expected {expected_experts}")
        return 1
    ours = load_file(ours_path)
    worst = 0.0
    count = 0
    with torch.no_grad():
        for prefix, block in moe_blocks(model):
            if prefix + ".input" not in ours:  # 5.x names hub-layout blocks "mlp"
                prefix = prefix.replace(".mlp", ".block_sparse_moe")
            x = ours[prefix + ".input"]
            y = block(x)
            if isinstance(y, tuple):
                y = y[0]
            want = ours[prefix + ".output"]
            diff = (y - want).abs().max().item()
            worst = max(worst, diff)
            count += 1
            if not torch.allclose(y, want, rtol=1e-5, atol=1e-6):
                print(f"FAIL: {prefix}: max |transformers - moeprune| = {diff:.3g}")
                return 1
    if count == 0:
        print("FAIL: no MoE blocks found")
        return 1
    print(f"ok: transformers {transformers.__version__} loads {directory} ({experts} experts); "
          f"{count} MoE blocks match moeprune, max |diff| {worst:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
