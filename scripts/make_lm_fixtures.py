"""Makes the tiny whole-model language MoE checkpoints and reference outputs that the C++
decoder-only causal-LM parity tests read.

Run twice, v4 first (scripts/hf_python installs each transformers):
    scripts/hf_python 4.57.6 scripts/make_lm_fixtures.py v4 test/fixtures/lm
    scripts/hf_python 5.24.0 scripts/make_lm_fixtures.py v5 test/fixtures/lm
Check any folder against its reference with transformers:
    scripts/hf_python 4.57.6 test/lm/check_lm_transformers_load.py \\
        test/fixtures/lm/mixtral test/fixtures/lm/mixtral_reference.safetensors

v4 writes, with transformers 4.57.6 (the hub's per-expert layout), for each FAMILY of mixtral,
qwen2_moe, qwen3_moe, olmoe, deepseek, deepseek_v2 (group-limited greedy, YaRN),
deepseek_v2_greedy (greedy, q LoRA), deepseek_v3 (correction bias, 4 groups, YaRN) and glm4_moe
(partial rotary, q/k norm), or for the families named after the folder:
  FAMILY/                       config.json + model.safetensors, fp32, no generation_config.json
  mixtral_sharded/              mixtral in 30 KB shards with model.safetensors.index.json
  FAMILY_reference.safetensors  input_ids   int64 [2, 10]
                                logits      fp32 [2, 10, 96]  the fp32 model, no mask, no cache
                                logits_bf16 fp32 [2, 10, 96]  the bf16 model's logits, cast
                                nll         fp32 [2, 9]       -log p(input_ids[:, 1:]) under logits
                                prompt      int64 [1, 6]
                                greedy      int64 [1, 26]     prompt + 20 argmax tokens (fp32)
All tiny: vocab 96, hidden 32, 4 heads, 2 key/value heads, 6 routed experts, top-2, expert width
16, dense MLP width 48, 64 positions, rms_norm_eps 1e-6; eos, bos and pad ids are null, so
generation never stops early. Attention is "sdpa" everywhere (torch scaled_dot_product_attention,
is_causal, no mask tensor). deepseek is the hub's remote-code DeepSeek-MoE (model_type "deepseek"):
its config.json is written here with the hub's keys and its model is test/lm/deepseek_reference.py.

The bf16 model is the fp32 one with every parameter cast to bf16 but the rotary inv_freq buffers
kept in fp32, i.e. what from_pretrained(dtype=torch.bfloat16) builds (checked for the transformers
families); a bare .to(torch.bfloat16) would also round inv_freq to bf16, which moves the logits
about as much as bf16 itself does. The margins below are printed per family.

Weights (torch.manual_seed(0)): embeddings N(0, 1); linear weights N(0, 1/in_features); routers
N(0, 0.5^2), decisive like a trained model's; biases N(0, 0.2^2); every RMSNorm weight (q/k norms
too) 1 + 0.1 N(0, 1). qwen3_moe ties lm_head to the embeddings, which would then make the logits
echo the current token: its embeddings are N(0, 0.1^2) and its final norm weight 4 (1 + 0.1 N).

Inputs: the minimum over many tokens and layers of random routing margins is small, comparable to
bf16 rounding, so the inputs are chosen, from a generator seeded 1234. input_ids are the 2 of 2048
(deepseek_v3, glm4_moe: 8192) random rows whose smallest router margin (k-th minus (k+1)-th fp32 logit; for the group-limited
routers the smaller of the group margin and the expert margin on the scores they choose on,
see decision()) is largest against the bf16 error of those values; the script asserts that the bf16 model routes every token of input_ids
like the fp32 one, with the smallest margin at least 4 times the largest error. prompt is, of 512
random prompts whose 20 greedy tokens hold at least 8 distinct ones, the one whose continuation
keeps the largest routing and top-1 margins against the bf16 errors and that the bf16 model
continues identically; greedy is an fp32 reference, asserted only to keep margins >= 1e-3, and
transformers' generate (KV cache) must agree with a loop of full forwards.

v5 loads each transformers family folder with transformers 5.x and writes
  FAMILY_fused/                         saved with save_original_format=False (fused experts:
                                        mlp.experts.gate_up_proj [E, 2F, d], down_proj [E, d, F])
  FAMILY_fused_reference.safetensors    input_ids (the v4 ones) and 5.x's fp32 logits
"""

import copy
import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file

sys.dont_write_bytecode = True  # no __pycache__ next to deepseek_reference.py
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "lm"))
import deepseek_reference  # noqa: E402  (test/lm/deepseek_reference.py)

FAMILIES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek", "deepseek_v2",
            "deepseek_v2_greedy", "deepseek_v3", "glm4_moe"]
TRANSFORMERS_FAMILIES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"]
ATTN = "sdpa"
SEED = 0
TOP_K = 2
COMMON = dict(vocab_size=96, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=64, rms_norm_eps=1e-6, bos_token_id=None,
              eos_token_id=None, pad_token_id=None)


def hf_config(family):
    if family == "mixtral":
        return transformers.MixtralConfig(
            **COMMON, num_hidden_layers=2, intermediate_size=16, num_local_experts=6,
            num_experts_per_tok=TOP_K, rope_theta=1e6, tie_word_embeddings=False,
            sliding_window=None)
    if family == "qwen2_moe":
        return transformers.Qwen2MoeConfig(
            **COMMON, num_hidden_layers=3, intermediate_size=48, moe_intermediate_size=16,
            shared_expert_intermediate_size=40, num_experts=6, num_experts_per_tok=TOP_K,
            decoder_sparse_step=1, mlp_only_layers=[1], norm_topk_prob=False,
            use_sliding_window=False, tie_word_embeddings=False, qkv_bias=True)
    if family == "qwen3_moe":
        return transformers.Qwen3MoeConfig(
            **COMMON, num_hidden_layers=4, head_dim=16, intermediate_size=48,
            moe_intermediate_size=16, num_experts=6, num_experts_per_tok=TOP_K,
            decoder_sparse_step=2, mlp_only_layers=[], norm_topk_prob=True,
            use_sliding_window=False, tie_word_embeddings=True, attention_bias=False)
    if family == "olmoe":
        return transformers.OlmoeConfig(
            **COMMON, num_hidden_layers=2, intermediate_size=16, num_experts=6,
            num_experts_per_tok=TOP_K, norm_topk_prob=False, clip_qkv=None,
            tie_word_embeddings=False)
    # DeepSeek-V2/V3 and GLM-4.5 (issue 16): three layers, the first dense (first_k_dense_replace),
    # routed experts plus shared ones; multi-head latent attention has as many key/value heads
    # as query heads (transformers' sdpa path would repeat the keys otherwise).
    grouped = dict(num_hidden_layers=3, first_k_dense_replace=1, intermediate_size=48,
                   moe_intermediate_size=16, n_shared_experts=2, num_experts_per_tok=TOP_K,
                   tie_word_embeddings=False)
    mla = dict(COMMON, num_key_value_heads=4, kv_lora_rank=16, qk_nope_head_dim=8,
               qk_rope_head_dim=4, v_head_dim=6)
    if family == "deepseek_v2":  # group-limited greedy, YaRN with attention_factor != 1
        return transformers.DeepseekV2Config(
            **mla, **grouped, q_lora_rank=None, n_routed_experts=6,
            topk_method="group_limited_greedy", n_group=3, topk_group=2,
            routed_scaling_factor=1.5, norm_topk_prob=False,
            rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                          "mscale": 1.0, "mscale_all_dim": 0.707, "beta_fast": 32.0,
                          "beta_slow": 1.0})
    if family == "deepseek_v2_greedy":  # DeepSeek-V2-Lite's router, q LoRA, attention biases
        return transformers.DeepseekV2Config(
            **mla, **grouped, q_lora_rank=12, n_routed_experts=6, topk_method="greedy",
            routed_scaling_factor=1.0, norm_topk_prob=False, attention_bias=True)
    if family == "deepseek_v3":  # sigmoid, correction bias, 4 groups, YaRN softmax mscale
        return transformers.DeepseekV3Config(
            **mla, **grouped, q_lora_rank=12, n_routed_experts=8, n_group=4, topk_group=2,
            routed_scaling_factor=2.5, norm_topk_prob=True, rope_interleave=True,
            rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                          "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32.0,
                          "beta_slow": 1.0})
    if family == "glm4_moe":  # partial rotary, per-head q/k norm, q/k/v biases
        return transformers.Glm4MoeConfig(
            **COMMON, **dict(grouped, n_shared_experts=1), n_routed_experts=8, n_group=2,
            topk_group=1, routed_scaling_factor=1.8, norm_topk_prob=True,
            partial_rotary_factor=0.5, use_qk_norm=True, attention_bias=True)
    raise ValueError(family)


def deepseek_config():
    # The keys of deepseek-ai/deepseek-moe-16b-base's config.json, tiny values.
    return {
        "architectures": ["DeepseekForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_deepseek.DeepseekConfig",
            "AutoModel": "modeling_deepseek.DeepseekModel",
            "AutoModelForCausalLM": "modeling_deepseek.DeepseekForCausalLM",
        },
        "aux_loss_alpha": 0.001,
        "bos_token_id": None,
        "eos_token_id": None,
        "first_k_dense_replace": 1,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 48,
        "max_position_embeddings": 64,
        "model_type": "deepseek",
        "moe_intermediate_size": 16,
        "moe_layer_freq": 1,
        "n_routed_experts": 6,
        "n_shared_experts": 2,
        "norm_topk_prob": False,
        "num_attention_heads": 4,
        "num_experts_per_tok": TOP_K,
        "num_hidden_layers": 3,
        "num_key_value_heads": 2,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000,
        "scoring_func": "softmax",
        "seq_aux": True,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": transformers.__version__,
        "use_cache": True,
        "vocab_size": 96,
    }


def is_router(name):
    # mixtral: block_sparse_moe.gate.weight; the others: mlp.gate.weight (deepseek's MoEGate too).
    return name.endswith(".gate.weight")


def init_weights(model, tied):
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied lm_head is listed once, as embed_tokens
            if name.endswith("norm.weight"):
                p.copy_((4.0 if tied and name == "model.norm.weight" else 1.0)
                        * (1.0 + 0.1 * torch.randn(p.shape)))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape) * (0.1 if tied else 1.0))
            elif is_router(name):
                p.copy_(0.5 * torch.randn(p.shape))
            else:
                p.copy_(torch.randn(p.shape) / p.shape[-1] ** 0.5)


def build(family, seed):
    torch.manual_seed(seed)
    if family == "deepseek":
        model = deepseek_reference.build(deepseek_config())
    else:
        config = hf_config(family)
        config._attn_implementation = ATTN
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=ATTN)
        assert model.config._attn_implementation == ATTN
    init_weights(model, tied=model.lm_head.weight is model.model.embed_tokens.weight)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                # Partly negative, of the order of the sigmoid scores' spread: it moves choices.
                b.copy_(torch.rand(b.shape) * 0.6 - 0.35)
    return model.eval()


def to_bf16(model):
    # What from_pretrained(dtype=torch.bfloat16) builds: bf16 parameters, fp32 rotary inv_freq.
    b = copy.deepcopy(model).to(torch.bfloat16)
    for mb, m in zip(b.modules(), model.modules()):
        if "inv_freq" in mb._buffers:
            mb._buffers["inv_freq"] = m._buffers["inv_freq"].clone()
    return b


def logits_of(model, ids):
    with torch.no_grad():
        if hasattr(model, "generate"):  # transformers
            return model(input_ids=ids, use_cache=False).logits.float()
        return model(ids).float()  # deepseek_reference


def generate(model, prompt, new_tokens):
    if not hasattr(model, "generate"):
        return deepseek_reference.greedy(model, prompt, new_tokens)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=0, do_sample=False,
                             eos_token_id=None, pad_token_id=None, num_beams=1)
    assert out.shape[1] == prompt.shape[1] + new_tokens, out.shape
    # generate decodes with a KV cache; a loop over full forwards must agree.
    assert torch.equal(out, deepseek_reference.greedy(model, prompt, new_tokens))
    return out


def router_modules(model):
    for name, module in model.named_modules():
        if name.endswith(".gate") and hasattr(module, "weight") and module.weight.dim() == 2:
            yield name, module


def decision(module, x, output):
    """A router's decision values [N, E] for tokens x, the experts it chooses (sorted) [N, k] and
    each token's margin [N]: for softmax top-k routers the fp32 logits and their k-th minus
    (k+1)-th; for the group-limited routers of DeepSeek-V2/V3 and GLM-4.5 the values they choose
    on (V3/GLM: sigmoid + correction bias; V2: the fp32 logits, whose order its softmax keeps) and
    the smaller of the group margin (topk_group-th minus next group score) and the expert margin
    among the kept groups' experts (the dropped ones masked as transformers masks them)."""
    grouped = hasattr(module, "e_score_correction_bias") or (
        getattr(module, "topk_method", "greedy") == "group_limited_greedy")
    if not grouped:
        # nn.Linear: its output in the model's dtype (softmax and top-k follow in fp32);
        # DeepseekV2MoEGate (greedy) returns (indices, weights) from fp32 logits.
        logits = (torch.nn.functional.linear(x.float(), module.weight.float())
                  if isinstance(output, tuple) else output.float())
        top = logits.topk(TOP_K + 1, dim=-1).values
        return logits, logits.topk(TOP_K, dim=-1).indices.sort(-1).values, top[:, -2] - top[:, -1]
    logits = torch.nn.functional.linear(x.float(), module.weight.float())
    if hasattr(module, "e_score_correction_bias"):  # DeepseekV3TopkRouter, Glm4MoeTopkRouter
        values = logits.sigmoid() + module.e_score_correction_bias.float()
        groups, kept = module.n_group, module.topk_group
        group_scores = values.view(-1, groups, values.shape[1] // groups).topk(2, -1)[0].sum(-1)
    else:  # DeepseekV2MoEGate, group_limited_greedy: softmax keeps the logits' order
        values = logits
        groups, kept = module.num_group, module.topk_group
        group_scores = values.view(-1, groups, values.shape[1] // groups).max(-1).values
    margin = torch.full((values.shape[0],), float("inf"))
    if groups > 1:
        g = group_scores.sort(-1, descending=True).values
        margin = g[:, kept - 1] - g[:, kept]
        mask = torch.zeros_like(group_scores).scatter_(1, group_scores.topk(kept, -1)[1], 1)
        # transformers masks with 0.0: below every softmax score, above no sigmoid + bias one.
        dropped = float("-inf") if values is logits else 0.0
        values_kept = values.masked_fill(
            ~mask.bool().repeat_interleave(values.shape[1] // groups, dim=1), dropped)
    else:
        values_kept = values
    top = values_kept.topk(TOP_K + 1, dim=-1)
    margin = torch.minimum(margin, top.values[:, -2] - top.values[:, -1])
    return values, top.indices[:, :TOP_K].sort(-1).values, margin


def routing(model, ids):
    """{router name: (decision values [N, E], chosen experts sorted [N, k], margins [N])} for one
    forward."""
    records = {}

    def hook(name):
        def f(module, inputs, output):
            records[name] = decision(module, inputs[0].reshape(-1, inputs[0].shape[-1]), output)
        return f

    handles = [m.register_forward_hook(hook(n)) for n, m in router_modules(model)]
    try:
        logits_of(model, ids)
    finally:
        for h in handles:
            h.remove()
    return records


def router_stats(model, bf16, ids):
    """Per row of ids [B, T], over its tokens and MoE layers: the smallest fp32 routing margin
    (decision above), the largest bf16 error of the decision values, and how many token-layers
    the bf16 model routes to other experts."""
    b, t = ids.shape
    margin, err = torch.full((b,), float("inf")), torch.zeros(b)
    flips = torch.zeros(b, dtype=torch.long)
    r32, r16 = routing(model, ids), routing(bf16, ids)
    for name in r32:
        (v32, c32, m32), (v16, c16, _) = r32[name], r16[name]
        margin = torch.minimum(margin, m32.view(b, t).amin(1))
        err = torch.maximum(err, (v32 - v16).abs().view(b, t, -1).amax((1, 2)))
        flips += (c32 != c16).any(-1).view(b, t).sum(1)
    return margin, err, flips


def greedy_stats(model, bf16, paths, p):
    """Per greedy path [B, p + n]: the smallest fp32 top-1 minus top-2 logit gap over its n choices
    and the largest bf16 logit error there."""
    l32 = logits_of(model, paths[:, :-1])[:, p - 1:]
    l16 = logits_of(bf16, paths[:, :-1])[:, p - 1:]
    assert torch.equal(l32.argmax(-1), paths[:, p:])
    top = l32.topk(2, dim=-1).values
    return (top[..., 0] - top[..., 1]).amin(1), (l32 - l16).abs().amax((1, 2))


def pick_inputs(model, bf16, candidates=2048, new_tokens=20):
    """input_ids: the 2 of `candidates` random rows of 10 tokens whose routing margins are largest against
    the bf16 model's router error; prompt: the 1 of 512 random 6-token prompts whose greedy
    continuation keeps the largest routing and top-1 margins against the bf16 errors, and which
    the bf16 model continues the same way. Minimums over many tokens and layers of random margins
    are small, so routing only stays put under bf16 rounding on chosen inputs. Prompts whose
    continuation loops over fewer than 8 distinct tokens are passed over."""
    g = torch.Generator().manual_seed(1234)
    rows = torch.randint(0, 96, (candidates, 10), generator=g)
    prompts = torch.randint(0, 96, (512, 6), generator=g)
    margin, err, flips = router_stats(model, bf16, rows)
    score = torch.where(flips == 0, margin / err, torch.zeros(()))
    input_ids = rows[score.topk(2).indices.sort().values]
    paths = deepseek_reference.greedy(model, prompts, new_tokens)
    same = (deepseek_reference.greedy(bf16, prompts, new_tokens) == paths).all(1)
    margin, err, flips = router_stats(model, bf16, paths)
    gmargin, gerr = greedy_stats(model, bf16, paths, prompts.shape[1])
    score = torch.where(same & (flips == 0), torch.minimum(margin / err, gmargin / gerr),
                        torch.zeros(()))
    # Random tiny models often fall into a loop of one or two tokens; a continuation that does
    # not is a better test of attention and positions.
    distinct = torch.tensor([len(set(p.tolist())) for p in paths[:, prompts.shape[1]:]])
    score = torch.where(distinct >= min(8, distinct.max().item()), score, torch.full((), -1.0))
    return input_ids, prompts[score.argmax()][None]


def stability(model, bf16, input_ids, prompt, greedy):
    """The margins of the chosen inputs, as the tests will see them."""
    s = {}
    m, e, f = router_stats(model, bf16, input_ids)
    s.update(router_margin=m.min().item(), router_bf16_err=e.max().item(),
             router_bf16_flips=int(f.sum()))
    m, e, f = router_stats(model, bf16, greedy)
    s.update(greedy_router_margin=m.item(), greedy_router_bf16_err=e.item(),
             greedy_router_bf16_flips=int(f))
    m, e = greedy_stats(model, bf16, greedy, prompt.shape[1])
    s.update(greedy_margin=m.item(), greedy_bf16_err=e.item())
    s["greedy_bf16_equal"] = bool(torch.equal(
        deepseek_reference.greedy(bf16, prompt, greedy.shape[1] - prompt.shape[1]), greedy))
    return s


def save_model(family, model, directory, **kwargs):
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    os.makedirs(directory)
    if family == "deepseek":
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(model.config_dict, f, indent=2, sort_keys=True)
            f.write("\n")
    else:
        model.save_pretrained(directory, safe_serialization=True, **kwargs)
        gen = os.path.join(directory, "generation_config.json")
        if os.path.exists(gen):
            os.remove(gen)


def make_family(family, out):
    model = build(family, SEED)
    bf16 = to_bf16(model)
    # The sigmoid routers' margins are narrower against bf16 errors: more rows to choose from.
    input_ids, prompt = pick_inputs(
        model, bf16, candidates=8192 if family in ("deepseek_v3", "glm4_moe") else 2048)
    greedy = generate(model, prompt, 20)
    s = stability(model, bf16, input_ids, prompt, greedy)
    print(f"{family}: " + ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items()))
    # The bf16 logits are compared on input_ids: routing there must survive bf16 with room.
    assert s["router_bf16_flips"] == 0 and s["router_margin"] >= 4 * s["router_bf16_err"], s
    # greedy is an fp32 reference: its margins need only dwarf fp32 rounding.
    assert s["greedy_router_margin"] >= 1e-3 and s["greedy_margin"] >= 1e-3, s
    directory = os.path.join(out, family)
    save_model(family, model, directory)
    if family == "mixtral":
        save_model(family, model, os.path.join(out, "mixtral_sharded"), max_shard_size="30KB")
    if family != "deepseek":  # the bf16 model is what from_pretrained(dtype=bf16) gives
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.bfloat16, attn_implementation=ATTN).eval()
        assert torch.equal(logits_of(loaded, input_ids), logits_of(bf16, input_ids))
    logits = logits_of(model, input_ids)
    nll = -torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None])[..., 0]
    tensors = {"input_ids": input_ids, "logits": logits, "logits_bf16": logits_of(bf16, input_ids),
               "nll": nll, "prompt": prompt, "greedy": greedy}
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(out, f"{family}_reference.safetensors"), metadata={"format": "pt"})


def v4(out, only=()):
    for family in only or FAMILIES:
        make_family(family, out)


def v5(out):
    for family in TRANSFORMERS_FAMILIES:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            os.path.join(out, family), attn_implementation=ATTN, dtype=torch.float32,
            output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys",
                                         "mismatched_keys")), info
        model.eval()
        directory = os.path.join(out, f"{family}_fused")
        save_model(family, model, directory, save_original_format=False)
        v4_reference = load_file(os.path.join(out, f"{family}_reference.safetensors"))
        input_ids = v4_reference["input_ids"]
        logits = logits_of(model, input_ids)
        diff = (logits - v4_reference["logits"]).abs().max().item()
        print(f"{family}: max |5.x logits - 4.x logits| = {diff:.3g}")
        assert diff <= 1e-5
        save_file({"input_ids": input_ids, "logits": logits.contiguous()},
                  os.path.join(out, f"{family}_fused_reference.safetensors"),
                  metadata={"format": "pt"})


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    transformers.utils.logging.disable_progress_bar()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    if mode == "v4":
        v4(out, sys.argv[3:])
    else:
        v5(out)
