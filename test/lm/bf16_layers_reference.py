"""Every decoder layer's input and output in transformers' bf16 model, for per-layer bf16 checks.

    bf16_layers_reference.py FIXTURES OUT FAMILY...

FIXTURES/FAMILY is loaded with from_pretrained(dtype=torch.bfloat16) (rotary inv_freq stays fp32,
as transformers builds it) and run on one sequence of 1024 seeded random token ids; OUT/FAMILY.safetensors gets
"input_ids" and, as bf16: "embed" (the embedding output), "layer.I.in" / "layer.I.out" for every decoder layer,
"layer.I.attn.in" / ".attn.out" and "layer.I.mlp.in" / ".mlp.out" (the attention and the MLP or MoE
block alone, before the residual add), "norm" (the final norm's output) and "logits". lm_bf16_layers then runs moeprune's bf16 layers on
the same inputs, one op group at a time, so rounding differences do not compound over layers.

The cached path: the same ids, the first PREFILL through the model at once with a DynamicCache
(bf16 keys and values), then the last DECODE one at a time with it: "cache.layer.I.attn.in" /
".attn.out" hold the attention's inputs and outputs of both, in order ([1, PREFILL + DECODE, d]),
"cache.logits" the decode steps' logits. Generation: "generate.ids", transformers' greedy
continuation ([1, PROMPT + NEW], no end-of-sequence stop) of the first PROMPT ids, and
"generate.scores" [NEW, vocab] (fp32), the logits each new token was chosen from.
"""

import os
import sys

import torch
import transformers

from safetensors.torch import save_file

SEQUENCE_LENGTH = int(os.environ.get("BF16_LAYERS_TOKENS", "1024"))
DECODE = 24
PREFILL = SEQUENCE_LENGTH - DECODE
NEW = 32
# A short prompt: over 992 tokens the whole model's bf16 differences compound (transformers' and
# moeprune's first logits 7 to 38 ulps apart), over 16 they stay at a near-tie's size.
PROMPT = 16


def hidden_of(args, kwargs):
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def main(fixtures, out, *families):
    os.makedirs(out, exist_ok=True)
    for family in families:
        directory = os.path.join(fixtures, family)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
        # One sequence of SEQUENCE_LENGTH tokens: query-key distances up to 1023, where rotary
        # frequencies rounded to bf16 turn the tiny models' second frequency (theta^(-1/4) =
        # 0.03) by up to 1023 x 0.03 x 2^-9 = 0.06 rad; over 10 tokens that hides in rounding.
        generator = torch.Generator().manual_seed(7)
        ids = torch.randint(0, model.config.vocab_size, (1, SEQUENCE_LENGTH), generator=generator)
        captured = {"input_ids": ids}
        hooks = [model.model.embed_tokens.register_forward_hook(
            lambda m, a, o: captured.__setitem__("embed", o))]
        for i, layer in enumerate(model.model.layers):
            def pre(m, args, kwargs, i=i):
                captured[f"layer.{i}.in"] = hidden_of(args, kwargs)

            def post(m, args, kwargs, output, i=i):
                captured[f"layer.{i}.out"] = output[0] if isinstance(output, tuple) else output
            hooks.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
            hooks.append(layer.register_forward_hook(post, with_kwargs=True))
            # The attention and the MLP / MoE block alone (their outputs before the residual add,
            # where a rounding difference is not drowned by the residual stream).
            mlp = getattr(layer, "block_sparse_moe", None) or layer.mlp
            for name, module in (("attn", layer.self_attn), ("mlp", mlp)):
                def sub_in(m, args, kwargs, key=f"layer.{i}.{name}.in"):
                    captured[key] = hidden_of(args, kwargs)

                def sub_out(m, args, kwargs, output, key=f"layer.{i}.{name}.out"):
                    captured[key] = output[0] if isinstance(output, tuple) else output
                hooks.append(module.register_forward_pre_hook(sub_in, with_kwargs=True))
                hooks.append(module.register_forward_hook(sub_out, with_kwargs=True))
        hooks.append(model.model.norm.register_forward_hook(
            lambda m, a, o: captured.__setitem__("norm", o)))
        with torch.no_grad():
            captured["logits"] = model(ids).logits
        for h in hooks:
            h.remove()
        assert all(t.dtype == torch.bfloat16 for k, t in captured.items() if k != "input_ids")
        captured.update(cached_run(model, ids))
        captured.update(greedy_run(model, ids))
        save_file({k: v.detach().clone().contiguous() for k, v in captured.items()},
                  os.path.join(out, f"{family}.safetensors"))
    print(f"transformers {transformers.__version__}: bf16 layer inputs and outputs of "
          f"{len(families)} families")


def cached_run(model, ids):
    """The attention's inputs and outputs with a cache: a prefill, then one token at a time."""
    pieces = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        def sub_in(m, args, kwargs, key=f"cache.layer.{i}.attn.in"):
            pieces.setdefault(key, []).append(hidden_of(args, kwargs))

        def sub_out(m, args, kwargs, output, key=f"cache.layer.{i}.attn.out"):
            pieces.setdefault(key, []).append(output[0] if isinstance(output, tuple) else output)
        hooks.append(layer.self_attn.register_forward_pre_hook(sub_in, with_kwargs=True))
        hooks.append(layer.self_attn.register_forward_hook(sub_out, with_kwargs=True))
    cache = transformers.DynamicCache()
    logits = []
    with torch.no_grad():
        model(ids[:, :PREFILL], past_key_values=cache, use_cache=True)
        for t in range(PREFILL, PREFILL + DECODE):
            logits.append(model(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
    for h in hooks:
        h.remove()
    out = {key: torch.cat(parts, dim=1) for key, parts in pieces.items()}
    out["cache.logits"] = torch.cat(logits, dim=1)
    assert all(t.dtype == torch.bfloat16 for t in out.values())
    assert all(t.size(1) == PREFILL + DECODE for k, t in out.items() if k != "cache.logits")
    return out


def greedy_run(model, ids):
    """transformers' greedy continuation of the first PROMPT ids, NEW tokens, no stop."""
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        result = model.generate(ids[:, :PROMPT], max_new_tokens=NEW, min_new_tokens=NEW,
                                do_sample=False, output_scores=True, return_dict_in_generate=True,
                                pad_token_id=0)
    return {"generate.ids": result.sequences,
            "generate.scores": torch.cat(result.scores, dim=0).float()}


if __name__ == "__main__":
    main(*sys.argv[1:])
