"""Prunes the experts of a Qwen3-MoE checkpoint with llm-compressor (Wanda or SparseGPT), as an
independent reference for moeprune's per-expert pruning.

    scripts/llmcompressor_python test/lm/llmcompressor_reference.py MODEL_DIR TOKENS OUT \
        --method wanda|sparsegpt --pattern 0.5|2:4 --calibration routed|all [--attention]

MODEL_DIR: a Qwen3-MoE checkpoint in the per-expert layout of transformers 4.x
    (model.layers.N.mlp.experts.J.{gate,up,down}_proj.weight, [out, in]).
TOKENS: a safetensors file with one int64 tensor "input_ids" [N, S]; every sequence is used
    whole (no padding, attention mask all ones), one sequence per forward pass.
OUT: a safetensors file with every expert weight after pruning, in the per-expert naming and
    [out, in] orientation, fp32; with --attention, the attention projections (q, k, v, o) are
    targets too and written as well.

How llm-compressor 0.14.0.1 handles this model (read from its source):
- transformers 5.17 fuses the experts on load: Qwen3MoeExperts.gate_up_proj [E, 2I, H] (rows
  [:I] are gate_proj, rows [I:] up_proj, each [out, in]) and down_proj [E, H, I] ([out, in]).
- oneshot() "linearizes" the fused experts (llmcompressor.modeling.moe.linearize_moe) into a
  LinearExperts2D ModuleList of per-expert nn.Linear gate_proj/up_proj/down_proj, so the
  Wanda/SparseGPT hooks see one Linear per expert; it is done here explicitly, before oneshot,
  so the per-expert names exist for the token-count hooks and the output.
- moe_calibrate_all_experts (default True) makes LinearExperts2D.forward run every expert on
  every token and keep only the routed tokens' outputs, so the block's output is unchanged;
  False runs each expert on its routed tokens only.
Exits 1 when loading reports missing/unexpected keys or when a check on the result fails.
"""
import argparse
import os
import re
import sys

# llm-compressor logs two INFO lines per pruned Linear; keep its warnings only.
os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from llmcompressor import oneshot  # noqa: E402
from llmcompressor.modeling.moe.linearize import get_linearized_moes, linearize_moe  # noqa: E402
from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier  # noqa: E402

# The experts' Linear layers after linearization; attention, the router (mlp.gate, not a
# Linear in transformers 5) and lm_head are left alone.
EXPERT_LINEAR = r"re:.*\.mlp\.experts\.\d+\.(gate|up|down)_proj$"
EXPERT_KEY = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
ATTENTION_LINEAR = r"re:.*\.self_attn\.(q|k|v|o)_proj$"
ATTENTION_KEY = re.compile(r"model\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.weight$")


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("tokens")
    parser.add_argument("out")
    parser.add_argument("--method", choices=("wanda", "sparsegpt"), required=True)
    parser.add_argument("--pattern", choices=("0.5", "2:4"), required=True)
    parser.add_argument("--calibration", choices=("routed", "all"), required=True)
    parser.add_argument("--attention", action="store_true",
                        help="prune the attention projections too")
    return parser.parse_args()


def load_model(model_dir):
    model, info = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, output_loading_info=True)
    problems = {k: v for k, v in info.items() if k != "error_msgs" and v} | (
        {"error_msgs": info["error_msgs"]} if info.get("error_msgs") else {})
    if problems:
        fail(f"loading {model_dir}: {problems}")
    if model.config.model_type != "qwen3_moe":
        fail(f"expected a qwen3_moe checkpoint, got {model.config.model_type}")
    return model.eval()


def check_fused_layout(model, checkpoint):
    """The checkpoint's per-expert weights against transformers 5's fused experts."""
    inter = model.config.moe_intermediate_size
    for n, layer in enumerate(model.model.layers):
        experts = layer.mlp.experts
        for j in range(model.config.num_experts):
            prefix = f"model.layers.{n}.mlp.experts.{j}."
            fused = {"gate_proj": experts.gate_up_proj[j, :inter],
                     "up_proj": experts.gate_up_proj[j, inter:],
                     "down_proj": experts.down_proj[j]}
            for proj in PROJECTIONS:
                if not torch.equal(fused[proj], checkpoint[prefix + proj + ".weight"]):
                    fail(f"fused layout: {prefix}{proj} differs from the checkpoint")


def expert_linears(model):
    """(layer, expert, projection) -> the per-expert nn.Linear after linearization."""
    linears = {}
    for name, experts in get_linearized_moes(model):
        layer = int(re.fullmatch(r"model\.layers\.(\d+)\.mlp\.experts", name).group(1))
        for j in range(experts.num_experts):
            for proj in PROJECTIONS:
                linears[layer, j, proj] = getattr(experts[j], proj)
    return linears


def count_tokens(model, linears):
    """Hooks that count the tokens each expert's gate_proj receives (what it is calibrated on)
    and the tokens the router sends to each expert."""
    seen, routed, handles = {}, {}, []
    for (n, j, proj), linear in linears.items():
        if proj == "gate_proj":
            seen[n, j] = 0

            def pre_hook(_module, args, key=(n, j)):
                seen[key] += args[0].reshape(-1, args[0].shape[-1]).shape[0]
            handles.append(linear.register_forward_pre_hook(pre_hook))
    for n, layer in enumerate(model.model.layers):
        routed[n] = torch.zeros(model.config.num_experts, dtype=torch.int64)

        def router_hook(_module, _args, output, n=n):
            routed[n] += torch.bincount(output[2].flatten(), minlength=model.config.num_experts)
        handles.append(layer.mlp.gate.register_forward_hook(router_hook))
    return seen, routed, handles


def capture_moe_inputs(model, ids):
    """A plain transformers forward of the dense model (before llm-compressor touches it):
    per layer, the MoE block's input tokens [N*S, H] and the router's top-k expert indices."""
    captured, handles = {}, []
    for n, layer in enumerate(model.model.layers):

        def hook(_module, args, _output, n=n):
            captured[n] = args[0].reshape(-1, args[0].shape[-1]).clone()
        handles.append(layer.mlp.register_forward_hook(hook))

        def router_hook(_module, _args, output, n=n):
            captured[n, "topk"] = output[2].clone()
        handles.append(layer.mlp.gate.register_forward_hook(router_hook))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    for handle in handles:
        handle.remove()
    return captured


def wanda_expected(weight, inputs, pattern):
    """Wanda (Sun et al.) from scratch: score |W_ij| * ||X_j||_2, prune the lowest half of each
    output row, or the lowest 2 of each group of 4 inputs; returns the mask of pruned weights."""
    score = weight.abs() * inputs.double().pow(2).sum(0).sqrt().float()
    rows, cols = weight.shape
    if pattern == "2:4":
        groups = score.reshape(rows, cols // 4, 4)
        lowest = groups.topk(2, dim=-1, largest=False).indices
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, lowest, True)
        return mask.reshape(rows, cols)
    lowest = score.sort(dim=1, stable=True).indices[:, :cols // 2]
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, lowest, True)


def check_wanda(captured, checkpoint, out, config, calibration, pattern):
    """Compares llm-compressor's Wanda masks with wanda_expected on the captured inputs, which
    checks the routing (routed or all tokens) and the causal attention it calibrated with."""
    mismatched = 0
    for n in range(config.num_hidden_layers):
        hidden, topk = captured[n], captured[n, "topk"]
        for j in range(config.num_experts):
            prefix = f"model.layers.{n}.mlp.experts.{j}."
            w = {p: checkpoint[prefix + p + ".weight"] for p in PROJECTIONS}
            x = hidden if calibration == "all" else hidden[(topk == j).any(-1)]
            if x.shape[0] == 0:
                continue
            inter = torch.nn.functional.silu(x @ w["gate_proj"].T) * (x @ w["up_proj"].T)
            for proj, inputs in (("gate_proj", x), ("up_proj", x), ("down_proj", inter)):
                expected = wanda_expected(w[proj], inputs, pattern)
                mismatched += int((expected != (out[prefix + proj + ".weight"] == 0)).sum())
    print(f"wanda masks recomputed from a plain transformers forward: {mismatched} weights differ")
    if mismatched:
        fail("llm-compressor's Wanda masks differ from the recomputed ones")


def check_pattern(key, weight, method, pattern):
    """Zeros in one pruned weight [out, in]; returns the fraction of zeros."""
    zero = weight == 0
    rows, cols = weight.shape
    if pattern == "2:4":
        per_group = zero.reshape(rows, cols // 4, 4).sum(-1)
        if not (per_group >= 2).all():
            fail(f"{key}: a group of 4 along the input has fewer than 2 zeros")
    elif method == "wanda":
        # Wanda ranks |W| * ||x_j|| within each output row and prunes the lowest half.
        if not (zero.sum(1) >= cols // 2).all():
            fail(f"{key}: a row has fewer than {cols // 2} zeros: {zero.sum(1).tolist()}")
    else:
        # SparseGPT (unstructured) thresholds over all rows of each 128-column block:
        # rows differ, the block as a whole has int(numel * 0.5) + 1 zeros (<= threshold).
        for start in range(0, cols, 128):
            block = zero[:, start:start + 128]
            if block.sum() < int(block.numel() * 0.5):
                fail(f"{key}: columns {start}.. have {int(block.sum())} zeros of {block.numel()}")
    return zero.float().mean().item()


def main():
    args = parse_args()
    checkpoint = load_file(f"{args.model_dir}/model.safetensors")
    ids = load_file(args.tokens)["input_ids"]
    if ids.dtype != torch.int64 or ids.dim() != 2:
        fail(f"{args.tokens}: input_ids must be int64 [N, S], got {ids.dtype} {list(ids.shape)}")
    num_sequences, seq_len = ids.shape

    model = load_model(args.model_dir)
    check_fused_layout(model, checkpoint)
    captured = capture_moe_inputs(model, ids)
    linearize_moe(model)  # what oneshot would do first; see the docstring
    linears = expert_linears(model)
    for (n, j, proj), linear in linears.items():
        key = f"model.layers.{n}.mlp.experts.{j}.{proj}.weight"
        if not torch.equal(linear.weight, checkpoint[key]):
            fail(f"linearized {key} differs from the checkpoint")

    dataset = Dataset.from_dict({"input_ids": ids.tolist(),
                                 "attention_mask": torch.ones_like(ids).tolist()})
    sparsity, mask_structure = (0.5, "2:4") if args.pattern == "2:4" else (0.5, "0:0")
    modifier_cls = WandaPruningModifier if args.method == "wanda" else SparseGPTModifier
    # Defaults otherwise: SparseGPT block_size 128, dampening_frac 0.01.
    targets = [EXPERT_LINEAR] + ([ATTENTION_LINEAR] if args.attention else [])
    recipe = modifier_cls(sparsity=sparsity, mask_structure=mask_structure,
                          targets=targets, ignore=[])

    seen, routed, handles = count_tokens(model, linears)
    oneshot(model=model, recipe=recipe, dataset=dataset,
            num_calibration_samples=num_sequences, max_seq_length=seq_len, batch_size=1,
            shuffle_calibration_samples=False, pipeline="basic",
            moe_calibrate_all_experts=args.calibration == "all")
    for handle in handles:
        handle.remove()

    print(f"{args.method} {args.pattern} calibration={args.calibration}: "
          f"{num_sequences} x {seq_len} tokens")
    for n in sorted(routed):
        counts = [seen[n, j] for j in range(model.config.num_experts)]
        print(f"layer {n}: routed tokens per expert {routed[n].tolist()}, "
              f"calibration tokens per expert {counts}")
        if counts != (routed[n].tolist() if args.calibration == "routed"
                      else [num_sequences * seq_len] * len(counts)):
            fail(f"layer {n}: calibration token counts do not match --calibration")

    # Everything but the targets must be untouched.
    state = model.state_dict()
    for key, value in checkpoint.items():
        targeted = EXPERT_KEY.match(key) or (args.attention and ATTENTION_KEY.match(key))
        if not targeted and key in state and not torch.equal(state[key], value):
            fail(f"{key} changed, but it is not a target")

    out, fractions = {}, []
    for (n, j, proj), linear in sorted(linears.items()):
        key = f"model.layers.{n}.mlp.experts.{j}.{proj}.weight"
        weight = linear.weight.detach().to(torch.float32).contiguous().clone()
        if seen[n, j] == 0:
            # No token reached this expert: no hook fired, llm-compressor left it dense.
            print(f"warning: {key} got no calibration tokens and is not pruned")
        else:
            fractions.append(check_pattern(key, weight, args.method, args.pattern))
        out[key] = weight
    if args.method == "wanda":
        check_wanda(captured, checkpoint, out, model.config, args.calibration, args.pattern)
    if args.attention:
        for key in sorted(k for k in state if ATTENTION_KEY.match(k)):
            weight = state[key].detach().to(torch.float32).contiguous().clone()
            if torch.equal(weight, checkpoint[key]):
                fail(f"{key} is a target but llm-compressor left it unchanged")
            fractions.append(check_pattern(key, weight, args.method, args.pattern))
            out[key] = weight
    save_file(out, args.out)
    print(f"wrote {len(out)} weights to {args.out}; zero fraction per pruned weight "
          f"min {min(fractions):.4f} max {max(fractions):.4f}")


if __name__ == "__main__":
    main()
