"""Makes the tiny Hugging Face checkpoints and reference outputs the parity tests read.

Run twice, once per transformers version (scripts/hf_python installs each):
    scripts/hf_python 4.57.6 scripts/make_hf_fixtures.py v4 test/fixtures/hf
    scripts/hf_python 4.57.6 scripts/make_hf_fixtures.py v4_grouped test/fixtures/hf
    scripts/hf_python 5.24.0 scripts/make_hf_fixtures.py v5 test/fixtures/hf

v4 writes, with transformers 4.x (the hub's per-expert layout, and 4.x Switch capacity semantics):
  mixtral_pre/, mixtral_ft/            tiny MixtralForCausalLM, pre-trained and "fine-tuned"
  mixtral_ft_sharded/                  mixtral_ft in 30 KB shards with model.safetensors.index.json
  switch_pre/, switch_ft/              tiny SwitchTransformersForConditionalGeneration
  mixtral_ft_reference.safetensors     "<moe block prefix>.input" / ".output" for every MoE block
  switch_ft_reference.safetensors
  dtypes.safetensors                   arange(6) as [2, 3] in every dtype, by dtype name
v4_grouped writes, with transformers 4.x, the group-limited routers (two decoder layers, the
first dense, the second MoE; gate rows and correction bias drawn wide so routing is decisive):
  deepseek_v3/, glm4_moe/              sigmoid scores, e_score_correction_bias, groups by the
                                       sum of their top two, routed_scaling_factor
  deepseek_v2/                         softmax, group_limited_greedy (groups by their best)
  <name>_reference.safetensors         "<prefix>.input" / ".output": the routed experts' sum
                                       alone (DeepseekV3MoE.moe(x, *gate(x)); shared experts sit
                                       beside the MoE layer and are not part of it)
v5 loads mixtral_ft/ with transformers 5.x and writes
  mixtral_ft_fused/                    saved with save_original_format=False (fused
                                       experts.gate_up_proj / experts.down_proj)
  mixtral_ft_fused_reference.safetensors   5.x's MoE block outputs on the same inputs

"Fine-tuned" = the pre-trained weights with each router row scaled by its own factor and small
noise on the experts, so the criteria have a ranking to find.
"""

import os
import sys

import torch
import transformers
from safetensors.torch import save_file


def perturb(model, router_suffixes, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(name.endswith(s) for s in router_suffixes):
                scale = 1.0 + torch.rand(p.shape[0], 1, generator=g) * 0.8 - 0.3
                p.mul_(scale)
            elif ".experts." in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.01)


def mixtral_blocks(model):
    for i, layer in enumerate(model.model.layers):
        moe = getattr(layer, "block_sparse_moe", None) or layer.mlp
        prefix = f"model.layers.{i}." + ("block_sparse_moe" if hasattr(layer, "block_sparse_moe") else "mlp")
        yield prefix, moe


def switch_blocks(model):
    for stack_name, stack in (("encoder", model.encoder), ("decoder", model.decoder)):
        for i, block in enumerate(stack.block):
            ff = block.layer[-1]
            if getattr(ff, "is_sparse", False):
                sub = len(block.layer) - 1
                yield f"{stack_name}.block.{i}.layer.{sub}.mlp", ff.mlp


def reference(blocks, d_model, seed, seq):
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    with torch.no_grad():
        for prefix, moe in blocks:
            x = torch.randn(3, seq, d_model, generator=g)
            y = moe(x)
            if isinstance(y, tuple):
                y = y[0]
            tensors[prefix + ".input"] = x.contiguous()
            tensors[prefix + ".output"] = y.contiguous()
    return tensors


def dtypes(out):
    # arange(6) as [2, 3] in every dtype both torch and safetensors name.
    base = torch.arange(6).reshape(2, 3)
    kinds = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
             "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
             "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
             "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
             "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64}
    save_file({name: base.to(t) for name, t in kinds.items()},
              os.path.join(out, "dtypes.safetensors"), metadata={"format": "pt"})


def v4(out):
    dtypes(out)
    torch.manual_seed(0)
    mc = transformers.MixtralConfig(
        vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, num_local_experts=6,
        num_experts_per_tok=2, max_position_embeddings=32, tie_word_embeddings=False)
    model = transformers.MixtralForCausalLM(mc).eval()
    model.save_pretrained(os.path.join(out, "mixtral_pre"), safe_serialization=True)
    perturb(model, [".gate.weight"], seed=1)
    model.save_pretrained(os.path.join(out, "mixtral_ft"), safe_serialization=True)
    model.save_pretrained(os.path.join(out, "mixtral_ft_sharded"), safe_serialization=True,
                          max_shard_size="30KB")
    save_file(reference(list(mixtral_blocks(model)), 16, seed=2, seq=7),
              os.path.join(out, "mixtral_ft_reference.safetensors"))

    torch.manual_seed(0)
    sc = transformers.SwitchTransformersConfig(
        vocab_size=64, d_model=16, d_kv=8, d_ff=24, num_layers=2, num_decoder_layers=2,
        num_heads=2, num_experts=6, expert_capacity=3, encoder_sparse_step=2,
        decoder_sparse_step=2, router_jitter_noise=0.01)
    model = transformers.SwitchTransformersForConditionalGeneration(sc).eval()
    # Fresh routers are near zero; larger rows make the routing decisive, like a trained model's.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("router.classifier.weight"):
                p.normal_(0.0, 0.5)
    model.save_pretrained(os.path.join(out, "switch_pre"), safe_serialization=True)
    perturb(model, ["router.classifier.weight"], seed=1)
    model.save_pretrained(os.path.join(out, "switch_ft"), safe_serialization=True)
    # Ten tokens per sequence over six experts of capacity 3: some tokens are dropped.
    save_file(reference(list(switch_blocks(model)), 16, seed=2, seq=10),
              os.path.join(out, "switch_ft_reference.safetensors"))


def routed_reference(model, seed, seq):
    """The routed experts' output of every MoE block (no shared experts), on random inputs."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            moe = layer.mlp
            if not hasattr(moe, "gate"):
                continue
            d = model.config.hidden_size
            x = torch.randn(3, 7, d, generator=g)
            idx, weights = moe.gate(x)
            y = moe.moe(x.view(-1, d), idx, weights).view(3, 7, d)
            tensors[f"model.layers.{i}.mlp.input"] = x.contiguous()
            tensors[f"model.layers.{i}.mlp.output"] = y.contiguous()
    return tensors


def widen_routers(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                # Partly negative: a masked expert's 0.0 can outrank a kept one, as in transformers.
                b.copy_(torch.rand(b.shape, generator=g) * 0.6 - 0.35)


def v4_grouped(out):
    common = dict(vocab_size=64, hidden_size=16, intermediate_size=24, moe_intermediate_size=12,
                  num_hidden_layers=2, first_k_dense_replace=1, n_routed_experts=8,
                  n_shared_experts=1, num_attention_heads=2, max_position_embeddings=32,
                  tie_word_embeddings=False)
    mla = dict(q_lora_rank=None, kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4,
               v_head_dim=4, num_key_value_heads=2)
    configs = {
        "deepseek_v3": transformers.DeepseekV3Config(
            **common, **mla, num_experts_per_tok=3, n_group=4, topk_group=2,
            routed_scaling_factor=2.5, norm_topk_prob=True),
        "deepseek_v2": transformers.DeepseekV2Config(
            **common, **mla, num_experts_per_tok=2, n_group=4, topk_group=2,
            topk_method="group_limited_greedy", routed_scaling_factor=1.5),
        "glm4_moe": transformers.Glm4MoeConfig(
            **common, num_key_value_heads=1, num_experts_per_tok=2, n_group=2, topk_group=1,
            routed_scaling_factor=1.8, norm_topk_prob=True),
    }
    for name, config in configs.items():
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
        widen_routers(model, seed=3)
        model.save_pretrained(os.path.join(out, name), safe_serialization=True)
        save_file(routed_reference(model, seed=4, seq=7),
                  os.path.join(out, name + "_reference.safetensors"))


def v5(out):
    model = transformers.MixtralForCausalLM.from_pretrained(os.path.join(out, "mixtral_ft")).eval()
    model.save_pretrained(os.path.join(out, "mixtral_ft_fused"), save_original_format=False)
    save_file(reference(list(mixtral_blocks(model)), 16, seed=2, seq=7),
              os.path.join(out, "mixtral_ft_fused_reference.safetensors"))


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    {"v4": v4, "v4_grouped": v4_grouped, "v5": v5}[mode](out)
