"""A reference DeepSeek-MoE (hub model_type "deepseek", deepseek-ai/deepseek-moe-16b-base) causal LM
assembled from transformers 4.x's own pieces, for the fixtures and checks that transformers has no
class for (the hub model is remote code).

    build(config_dict) -> DeepseekForCausalLM        randomly initialised, hub tensor names
    load(directory) -> DeepseekForCausalLM            config.json + *.safetensors, strict keys
    greedy(model, prompt, new_tokens) -> ids          argmax loop over full forwards, no eos stop

Attention, norms, rotary embedding and dense MLPs are transformers' Llama modules (LlamaAttention
with attn_implementation "sdpa"); each MoE block is transformers' DeepseekV2MoE with
topk_method "greedy" and routed_scaling_factor 1.0: softmax over the routed experts' logits, top-k
of those probabilities without renormalisation, plus the shared experts (one SwiGLU MLP of width
moe_intermediate_size * n_shared_experts) always added. Layer i is MoE iff
i >= first_k_dense_replace and i % moe_layer_freq == 0. Needs transformers 4.x: 5.x fuses
DeepseekV2MoE's experts into 3D tensors, which would change the tensor names.

In fp32 this is the hub's model. In bf16 it is not quite: DeepseekV2MoE computes the router logits
and softmax in fp32 (hidden states and gate weight cast up) and sums the weighted expert outputs in
fp32 before casting back, where the hub's remote code computes the router logits, softmax and
weighted sum in the model's dtype.
"""

import glob
import json
import os

import torch
import transformers
from safetensors.torch import load_file
from torch import nn
from transformers.models.llama.modeling_llama import (LlamaAttention, LlamaMLP, LlamaRMSNorm,
                                                      LlamaRotaryEmbedding)

try:  # transformers 4.x; 5.x calls it DeepseekV2Moe and fuses its experts
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2MoE
except ImportError:
    DeepseekV2MoE = None


def llama_config(cfg):
    c = transformers.LlamaConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        hidden_act=cfg["hidden_act"], max_position_embeddings=cfg["max_position_embeddings"],
        rms_norm_eps=cfg["rms_norm_eps"], rope_theta=cfg["rope_theta"],
        rope_scaling=cfg.get("rope_scaling"), attention_bias=cfg.get("attention_bias", False),
        attention_dropout=cfg.get("attention_dropout", 0.0), mlp_bias=False)
    c._attn_implementation = "sdpa"
    return c


def moe_config(cfg):
    if cfg.get("scoring_func", "softmax") != "softmax":
        raise ValueError(f"scoring_func {cfg['scoring_func']!r}: only softmax is modelled")
    if cfg.get("norm_topk_prob", False):
        raise ValueError("norm_topk_prob true is not modelled (DeepseekV2MoE never renormalises)")
    return transformers.DeepseekV2Config(
        hidden_size=cfg["hidden_size"], hidden_act=cfg["hidden_act"],
        n_routed_experts=cfg["n_routed_experts"], n_shared_experts=cfg["n_shared_experts"],
        num_experts_per_tok=cfg["num_experts_per_tok"],
        moe_intermediate_size=cfg["moe_intermediate_size"], topk_method="greedy",
        routed_scaling_factor=1.0, norm_topk_prob=False, mlp_bias=False,
        aux_loss_alpha=cfg.get("aux_loss_alpha", 0.001), seq_aux=cfg.get("seq_aux", True))


def is_moe_layer(cfg, i):
    return (cfg.get("n_routed_experts") is not None and i >= cfg["first_k_dense_replace"]
            and i % cfg["moe_layer_freq"] == 0)


class DeepseekDecoderLayer(nn.Module):
    def __init__(self, cfg, lc, mc, i):
        super().__init__()
        self.self_attn = LlamaAttention(lc, i)
        self.mlp = DeepseekV2MoE(mc) if is_moe_layer(cfg, i) else LlamaMLP(lc)
        self.input_layernorm = LlamaRMSNorm(lc.hidden_size, eps=lc.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(lc.hidden_size, eps=lc.rms_norm_eps)

    def forward(self, h, position_embeddings):
        a, _ = self.self_attn(self.input_layernorm(h), position_embeddings, attention_mask=None)
        h = h + a
        return h + self.mlp(self.post_attention_layernorm(h))


class DeepseekModel(nn.Module):
    def __init__(self, cfg, lc, mc):
        super().__init__()
        self.embed_tokens = nn.Embedding(lc.vocab_size, lc.hidden_size)
        self.layers = nn.ModuleList(
            [DeepseekDecoderLayer(cfg, lc, mc, i) for i in range(lc.num_hidden_layers)])
        self.norm = LlamaRMSNorm(lc.hidden_size, eps=lc.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(lc)  # inv_freq: a non-persistent buffer

    def forward(self, input_ids):
        h = self.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        position_embeddings = self.rotary_emb(h, positions)
        for layer in self.layers:
            h = layer(h, position_embeddings)
        return self.norm(h)


class DeepseekForCausalLM(nn.Module):
    """forward(input_ids [B, T]) -> logits [B, T, V], causal, no cache, no padding."""

    def __init__(self, cfg):
        super().__init__()
        if DeepseekV2MoE is None or not transformers.__version__.startswith("4."):
            raise RuntimeError(f"deepseek_reference needs transformers 4.x, not "
                               f"{transformers.__version__} (5.x fuses DeepseekV2MoE's experts)")
        self.config_dict = dict(cfg)
        lc, mc = llama_config(cfg), moe_config(cfg)
        self.model = DeepseekModel(cfg, lc, mc)
        self.lm_head = nn.Linear(lc.hidden_size, lc.vocab_size, bias=False)
        if cfg.get("tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids):
        return self.lm_head(self.model(input_ids))


def build(cfg):
    return DeepseekForCausalLM(cfg).eval()


def load(directory, strict=True):
    """The model in DIRECTORY; raises on any missing, unexpected or mis-shaped tensor."""
    with open(os.path.join(directory, "config.json")) as f:
        cfg = json.load(f)
    model = build(cfg)
    state = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.safetensors"))):
        state.update(load_file(path))
    if cfg.get("tie_word_embeddings", False):
        state.setdefault("lm_head.weight", state.get("model.embed_tokens.weight"))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state)
                        if expected[k].shape != state[k].shape)
    if strict and (missing or unexpected or mismatched):
        raise ValueError(f"{directory}: missing {missing}, unexpected {unexpected}, "
                         f"mismatched shapes {mismatched}")
    model.load_state_dict(state, strict=strict)
    return model


@torch.no_grad()
def greedy(model, prompt, new_tokens):
    """prompt [B, T] -> [B, T + new_tokens]: argmax at the last position, a full forward a step."""
    ids = prompt
    for _ in range(new_tokens):
        logits = model(ids)
        logits = logits if torch.is_tensor(logits) else logits.logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids
