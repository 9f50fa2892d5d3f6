"""Every decoder layer's input and output in transformers' bf16 model, for per-layer bf16 checks.

    bf16_layers_reference.py FIXTURES OUT FAMILY...

FIXTURES/FAMILY is loaded with from_pretrained(dtype=torch.bfloat16) (rotary inv_freq stays fp32,
as transformers builds it) and run on one sequence of 1024 seeded random token ids; OUT/FAMILY.safetensors gets
"input_ids" and, as bf16: "embed" (the embedding output), "layer.I.in" / "layer.I.out" for every decoder layer,
"layer.I.attn.in" / ".attn.out" and "layer.I.mlp.in" / ".mlp.out" (the attention and the MLP or MoE
block alone, before the residual add), "norm" (the final norm's output) and "logits". lm_bf16_layers then runs moeprune's bf16 layers on
the same inputs, one op group at a time, so rounding differences do not compound over layers.
"""

import os
import sys

import torch
import transformers

SEQUENCE_LENGTH = int(os.environ.get("BF16_LAYERS_TOKENS", "1024"))
from safetensors.torch import save_file


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
        save_file({k: v.detach().clone().contiguous() for k, v in captured.items()},
                  os.path.join(out, f"{family}.safetensors"))
    print(f"transformers {transformers.__version__}: bf16 layer inputs and outputs of "
          f"{len(families)} families")


if __name__ == "__main__":
    main(*sys.argv[1:])
