"""Makes the tiny Switch Transformers checkpoint and reference outputs that the C++ seq2seq
parity tests read.

    scripts/hf_python 4.57.6 scripts/make_switch_fixtures.py test/fixtures/seq2seq

writes, with transformers 4.57.6:
  switch_transformers/    config.json + model.safetensors (fp32) of a tiny
                          SwitchTransformersForConditionalGeneration: vocab 96, d_model 32, 4 heads
                          of 8, d_ff 48, 4 encoder blocks (sparse: 1, 3; step 2), 3 decoder blocks
                          (sparse: 1; step 3), 6 experts of capacity 3 per sequence, 8 relative
                          buckets up to distance 12, tied head
  switch_transformers_reference.safetensors
      input_ids [2, 12], attention_mask [2, 12] (the second row's last 3 tokens are padding),
      labels [2, 8] (the first row's last label is -100), decoder_input_ids [2, 8]
      (shift_right(labels)),
      logits [2, 8, 96]          fp32 model, eval mode
      logits_bf16 [2, 8, 96]     the bf16 model's logits, cast to fp32
      loss, lm_loss, encoder_z_loss, encoder_aux_loss, decoder_z_loss, decoder_aux_loss [1]
      dropped [1] int64          tokens the encoder's MoE layers dropped at capacity (> 0)
      prompt [1, 10], greedy [1, 21]   decoder start + 20 argmax tokens (generate, KV cache)

Weights: transformers' own initialisation (torch.manual_seed(0)), every layer norm weight then
1 + 0.1 N(0, 1) so the norms are not identities; the shared embedding is then scaled by 0.1 and
the decoder's final norm weight by 10, since with the tied head a random model's logits echo the
current token and greedy decoding repeats one id. Inputs are drawn from a generator seeded 1234:
of 256 candidates, the one with dropped tokens whose bf16 model routes every token as the fp32
one does, with the largest smallest top-1 router margin. The prompt is, of 64 candidates whose 20 greedy tokens
hold at least 3 distinct ones, the one that keeps the largest smallest top-1 logit
margin. (generate decodes one token per step with the cache, so the decoder's
capacity never drops a token there; a full forward over the whole decoded sequence would route
it with drops and can differ.)
"""

import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file

CONFIG = dict(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=4,
              num_sparse_encoder_layers=2, num_decoder_layers=3, num_sparse_decoder_layers=1,
              num_experts=6, expert_capacity=3, relative_attention_num_buckets=8,
              relative_attention_max_distance=12, router_jitter_noise=0.01, dropout_rate=0.1,
              decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def build():
    torch.manual_seed(0)
    config = transformers.SwitchTransformersConfig(**CONFIG)
    model = transformers.SwitchTransformersForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
        # The tied head would otherwise echo the current token (greedy decoding repeats one id).
        model.shared.weight.mul_(0.1)
        model.decoder.final_layer_norm.weight.mul_(10.0)
    assert model.config.encoder_sparse_step == 2 and model.config.decoder_sparse_step == 3
    return model


def run(model, ids, mask, labels):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, labels=labels,
                     output_router_logits=True)


def routing(out):
    """Per MoE layer: (router logits [B, S, E], expert index after capacity [B, S])."""
    layers = []
    for stack in (out.encoder_router_logits, out.decoder_router_logits):
        for entry in stack:
            if len(entry[0].shape) > 1:
                layers.append(entry)
    return layers


def encoder_dropped(model, ids, mask):
    """Tokens the encoder's MoE layers dropped at capacity, counted with forward hooks."""
    dropped = []

    def hook(module, args, output):
        router_mask = output[0]  # [B, S, E] one-hot after the capacity cut
        dropped.append(int((router_mask.sum(-1) == 0).sum()))

    handles = [b.layer[-1].mlp.router.register_forward_hook(hook)
               for b in model.encoder.block if b.layer[-1].is_sparse]
    with torch.no_grad():
        model.encoder(input_ids=ids, attention_mask=mask)
    for h in handles:
        h.remove()
    return sum(dropped)


def margin(layers):
    m = float("inf")
    for logits, _ in layers:
        top = logits.float().topk(2, dim=-1).values
        m = min(m, float((top[..., 0] - top[..., 1]).min()))
    return m


def pick_inputs(model, bf16, g):
    best = None
    for _ in range(256):
        ids = torch.randint(2, 96, (2, 12), generator=g)
        mask = torch.ones(2, 12, dtype=torch.long)
        mask[1, -3:] = 0
        labels = torch.randint(2, 96, (2, 8), generator=g)
        labels[0, -1] = -100
        if encoder_dropped(model, ids, mask) == 0:
            continue
        fp = routing(run(model, ids, mask, labels))
        bf = routing(run(bf16, ids, mask, labels))
        if any(not torch.equal(a[1], b[1]) for a, b in zip(fp, bf)):
            continue
        m = margin(fp)
        if best is None or m > best[0]:
            best = (m, ids, mask, labels)
    assert best is not None, "no candidate drops tokens and routes alike in bf16"
    print(f"inputs: smallest top-1 router margin {best[0]:.4f}")
    return best[1:]


def greedy(model, prompt, steps):
    """generate's decoder start + argmax tokens (KV cache) and the smallest top-1 logit gap."""
    with torch.no_grad():
        out = model.generate(input_ids=prompt, max_new_tokens=steps, do_sample=False, num_beams=1,
                             output_scores=True, return_dict_in_generate=True)
    gap = min(float(top[0] - top[1]) for top in (s[0].topk(2).values for s in out.scores))
    return out.sequences, gap


def main(out):
    model = build()
    bf16 = build().to(torch.bfloat16)
    folder = os.path.join(out, "switch_transformers")
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    model.save_pretrained(folder, safe_serialization=True)
    for extra in ("generation_config.json",):
        path = os.path.join(folder, extra)
        if os.path.exists(path):
            os.remove(path)

    g = torch.Generator().manual_seed(1234)
    ids, mask, labels = pick_inputs(model, bf16, g)
    out_fp = run(model, ids, mask, labels)
    out_bf = run(bf16, ids, mask, labels)
    t = {
        "input_ids": ids, "attention_mask": mask, "labels": labels,
        "decoder_input_ids": model._shift_right(labels),
        "logits": out_fp.logits.float(), "logits_bf16": out_bf.logits.float(),
        "loss": out_fp.loss.reshape(1),
        "encoder_z_loss": out_fp.encoder_z_loss.reshape(1),
        "encoder_aux_loss": out_fp.encoder_aux_loss.reshape(1),
        "decoder_z_loss": out_fp.decoder_z_loss.reshape(1),
        "decoder_aux_loss": out_fp.decoder_aux_loss.reshape(1),
        "dropped": torch.tensor([encoder_dropped(model, ids, mask)]),
    }
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(out_fp.logits.reshape(-1, 96), labels.reshape(-1),
                                               ignore_index=-100)
    t["lm_loss"] = ce.reshape(1)
    print(f"dropped tokens in the encoder: {int(t['dropped'])}; loss {float(out_fp.loss):.6f}")

    model.generation_config.eos_token_id = None  # never stop early
    best = None
    for _ in range(64):
        prompt = torch.randint(2, 96, (1, 10), generator=g)
        seq, gap = greedy(model, prompt, 20)
        key = (min(len(set(seq[0, 1:].tolist())), 3), gap)
        if best is None or key > best[0]:
            best = (key, prompt, seq)
    (distinct, gap), prompt, seq = best
    assert distinct >= 3 and gap >= 1e-2, best[0]
    print(f"greedy: smallest top-1 logit gap {gap:.4f}: {seq.tolist()}")
    t["prompt"] = prompt
    t["greedy"] = seq
    save_file({k: v.contiguous() for k, v in t.items()},
              os.path.join(out, "switch_transformers_reference.safetensors"))


if __name__ == "__main__":
    assert transformers.__version__ == "4.57.6", transformers.__version__
    main(sys.argv[1])
