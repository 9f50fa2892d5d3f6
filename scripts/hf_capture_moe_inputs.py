"""Turns calibration token ids into the file `moeprune prune --calibration` reads: the input
hidden states of every MoE block, one tensor [tokens, d_model] per block prefix.

    scripts/hf_python 4.57.6 scripts/hf_capture_moe_inputs.py CHECKPOINT_DIR TOKENS OUT.safetensors

TOKENS is a text file with one sequence of whitespace-separated token ids per line, or a
safetensors file with an integer tensor "input_ids" [sequences, length]. moeprune runs MoE layers,
not whole transformers, so the attention stack that turns ids into hidden states runs here.
"""

import sys

import torch
import transformers
from safetensors.torch import load_file, save_file


def read_tokens(path):
    if path.endswith(".safetensors"):
        return [row for row in load_file(path)["input_ids"].long()]
    with open(path) as f:
        return [torch.tensor([int(t) for t in line.split()]) for line in f if line.strip()]


def main():
    directory, tokens_path, out = sys.argv[1:4]
    config = transformers.AutoConfig.from_pretrained(directory)
    switch = config.model_type == "switch_transformers"
    cls = (transformers.SwitchTransformersForConditionalGeneration if switch
           else transformers.AutoModelForCausalLM)
    model = cls.from_pretrained(directory, torch_dtype=torch.float32).eval()
    captured = {}

    def hook(prefix):
        def grab(_module, args):
            captured.setdefault(prefix, []).append(args[0].detach().reshape(-1, args[0].shape[-1]))
        return grab

    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind in ("MixtralSparseMoeBlock", "SwitchTransformersSparseMLP"):
            module.register_forward_pre_hook(hook(name))
    with torch.no_grad():
        for ids in read_tokens(tokens_path):
            ids = ids.unsqueeze(0)
            if switch:
                model(input_ids=ids, decoder_input_ids=ids)
            else:
                model(input_ids=ids)
    tensors = {prefix: torch.cat(parts).contiguous() for prefix, parts in captured.items()}
    save_file(tensors, out)
    print(f"{out}: {len(tensors)} MoE blocks, "
          f"{next(iter(tensors.values())).shape[0]} tokens each")


if __name__ == "__main__":
    main()
