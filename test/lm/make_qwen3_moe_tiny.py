"""Writes a tiny random Qwen3-MoE checkpoint (and calibration token ids) for the llm-compressor
reference test.

    scripts/hf_python 4.57.6 test/lm/make_qwen3_moe_tiny.py OUT_DIR [TOKENS.safetensors]

The checkpoint is saved by transformers 4.57.6, so it has the per-expert layout
model.layers.N.mlp.experts.J.{gate,up,down}_proj.weight ([out, in]) that moeprune reads; the
reference script loads it with transformers 5.x, which fuses the experts on load. With a second
argument, also writes calibration token ids: one int64 tensor "input_ids" [N, S], and the same
ids as text beside it (TOKENS.ids) for moeprune.
Deterministic: fixed seed, fp32, CPU.
"""
import sys

import torch
from safetensors.torch import save_file
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

SEED = 1234
CALIBRATION_SEQUENCES = 8
CALIBRATION_LENGTH = 32


def make_config():
    return Qwen3MoeConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,  # multiple of 4: 2:4 groups along down_proj's input
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        max_position_embeddings=256,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    torch.manual_seed(SEED)
    model = Qwen3MoeForCausalLM(make_config()).to(torch.float32).eval()
    # The default init (std 0.02) gives a near-uniform router; widen it so routing is uneven
    # and the per-expert token counts differ visibly between --calibration routed and all.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0.0, 0.5)
    model.save_pretrained(sys.argv[1], safe_serialization=True)
    if len(sys.argv) == 3:
        generator = torch.Generator().manual_seed(SEED + 1)
        ids = torch.randint(0, model.config.vocab_size, (CALIBRATION_SEQUENCES, CALIBRATION_LENGTH),
                            generator=generator, dtype=torch.int64)
        save_file({"input_ids": ids}, sys.argv[2])
        # The same ids as text, row by row, for `moeprune sparsify --calibration X.ids`
        # (--samples 8 --seq-len 32 cuts them back into the same rows).
        with open(sys.argv[2].rsplit(".", 1)[0] + ".ids", "w") as f:
            f.write("\n".join(" ".join(str(int(v)) for v in row) for row in ids) + "\n")


if __name__ == "__main__":
    main()
