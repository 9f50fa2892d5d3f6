"""Independent references for `moeprune score`, `moeprune prune --budget` and `moeprune eval`.

    check_cli_references.py scores FINETUNED PRETRAINED SCORES.json
    check_cli_references.py budget SCORES.json PLAN.json TOTAL FLOOR TOP_K
    check_cli_references.py eval DIR TOKENS OURS.json CONTEXT

scores: router_norm_change recomputed from the two folders' router tensors (safetensors, fp64
row norms of `...block_sparse_moe.gate.weight`, Chowdhury et al. 2024: ||W_ft[s]|| - ||W_pre[s]||)
must equal the JSON's scores to 1e-12. budget: a naive greedy over the scores of every layer,
lowest first, skipping a layer once it would keep fewer than max(FLOOR, TOP_K) experts, must give
the plan's pruned sets. eval: transformers' summed NLL over windows of CONTEXT tokens, each
starting one token before the first token not yet scored (docs/language_models.md), must equal
the JSON's nll_sum to 1e-4 relative, with the same token count. Exits 1 on a difference.
"""

import json
import sys
from pathlib import Path

import torch


def router_norms(directory):
    from safetensors.torch import load_file
    tensors = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(f))
    out = {}
    for name, t in tensors.items():
        if name.endswith("block_sparse_moe.gate.weight"):
            out[name[: -len(".gate.weight")]] = t.double().norm(dim=1)
    return out


def check_scores(finetuned, pretrained, scores_json):
    ft, pre = router_norms(finetuned), router_norms(pretrained)
    ours = {layer["prefix"]: torch.tensor(layer["scores"], dtype=torch.float64)
            for layer in json.load(open(scores_json))["layers"]}
    if sorted(ours) != sorted(ft):
        print(f"layers differ: moeprune {sorted(ours)}, reference {sorted(ft)}")
        return 1
    worst = max((ours[p] - (ft[p] - pre[p])).abs().max().item() for p in ft)
    print(f"scores: {len(ft)} layers, max |moeprune - reference| = {worst:.3e}")
    return 0 if worst <= 1e-12 else 1


def check_budget(scores_json, plan_json, total, floor, top_k):
    layers = json.load(open(scores_json))["layers"]
    candidates = sorted((s, layer["index"], e) for layer in layers
                        for e, s in enumerate(layer["scores"]))
    keep_at_least = max(floor, top_k)
    pruned = {layer["index"]: [] for layer in layers}
    size = {layer["index"]: len(layer["scores"]) for layer in layers}
    for _, index, expert in candidates:
        if sum(map(len, pruned.values())) == total:
            break
        if size[index] - len(pruned[index]) - 1 >= keep_at_least:
            pruned[index].append(expert)
    expected = {k: sorted(v) for k, v in pruned.items()}
    plan = {layer["key"]: sorted(layer["pruned"]) for layer in json.load(open(plan_json))["layers"]}
    print(f"budget {total}, floor {floor}: moeprune {plan}, reference {expected}")
    return 0 if plan == expected else 1


def check_eval(directory, tokens, ours_json, context, dtype="fp32", fp32_json=None):
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[dtype],
        attn_implementation="sdpa").eval()
    ids = torch.tensor([int(t) for t in open(tokens).read().split()], dtype=torch.long)
    ours = json.load(open(ours_json))
    n = ids.numel()
    nll, scored, scored_until, begin = 0.0, 0, 1, 0
    with torch.no_grad():
        while scored_until < n:
            end = min(begin + context, n)
            window = ids[begin:end].unsqueeze(0)
            logits = model(window).logits[0, :-1].double()
            token_nll = -logits.log_softmax(-1).gather(-1, window[0, 1:, None])[:, 0]
            fresh = token_nll[scored_until - (begin + 1):]
            nll += fresh.sum().item()
            scored += fresh.numel()
            scored_until = end
            begin = min(begin + context, scored_until - 1)
    relative = abs(nll - ours["nll_sum"]) / abs(nll)
    print(f"eval: transformers {transformers.__version__} {scored} tokens, NLL {nll:.8f}; "
          f"moeprune {ours['tokens_scored']} tokens, NLL {ours['nll_sum']:.8f}; "
          f"relative difference {relative:.2e}")
    if dtype == "fp32":
        return 0 if scored == ours["tokens_scored"] and relative <= 1e-4 else 1
    # bf16: the whole model's rounding differences compound into the logits (a few bf16 ulps, at
    # logits near 5 about 0.1), so the sums agree to about 2e-4, as far as transformers' own bf16
    # and fp32 sums (1.7e-4). That cannot tell bf16 from fp32, so the run must also differ from
    # moeprune's fp32 one (3.6e-4 apart): --dtype was honoured.
    fp32 = json.load(open(fp32_json))["nll_sum"]
    apart = abs(ours["nll_sum"] - fp32) / abs(fp32)
    print(f"eval: moeprune bf16 and fp32 NLL {apart:.2e} apart")
    return 0 if scored == ours["tokens_scored"] and relative <= 1e-3 and apart > 1e-5 else 1


def check_same_nll(first_json, second_json):
    first, second = (json.load(open(f)) for f in (first_json, second_json))
    same = (first["nll_sum"] == second["nll_sum"]
            and first["tokens_scored"] == second["tokens_scored"])
    print(f"eval: {first_json} and {second_json}: NLL {first['nll_sum']!r} and "
          f"{second['nll_sum']!r}, {'the same' if same else 'DIFFERENT'}")
    return 0 if same else 1


def main(argv):
    mode, args = argv[1], argv[2:]
    if mode == "scores":
        return check_scores(*args)
    if mode == "budget":
        return check_budget(args[0], args[1], *map(int, args[2:]))
    if mode == "eval":
        return check_eval(args[0], args[1], args[2], int(args[3]), *args[4:])
    if mode == "same_nll":
        return check_same_nll(*args)
    print(f"unknown mode {mode}")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
