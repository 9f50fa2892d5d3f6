"""transformers' side of bench/lm_bench.cpp: the same checkpoint, CPU, threads and dtype.

    scripts/hf_python 4.57.6 bench/lm_transformers_bench.py DIR --threads N --dtype bf16 \
        --prefill 512 --decode-batches 1,8 --decode-tokens 16 --prompt 32 --repeat 3

Prints one JSON object: load seconds, RSS after load, prefill and decode tokens/s (median of
--repeat runs), with the same token ids as the C++ side (a fixed LCG, so no RNG differs).
"""

import argparse
import json
import resource
import statistics
import time

import torch
import transformers


def tokens(batch, length, vocab, seed):
    # x_{n+1} = (a x_n + c) mod 2^31, the same sequence lm_bench.cpp makes.
    out, x = [], seed
    for _ in range(batch * length):
        x = (1103515245 * x + 12345) % (1 << 31)
        out.append(x % vocab)
    return torch.tensor(out, dtype=torch.long).view(batch, length)


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--decode-batches", default="1,8")
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    start = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        a.dir, torch_dtype=dtype, attn_implementation="sdpa").eval()
    load_s = time.perf_counter() - start
    result = {"transformers": transformers.__version__, "torch": torch.__version__,
              "load_seconds": load_s, "rss_after_load_mb": rss_mb()}
    vocab = model.config.vocab_size
    with torch.no_grad():
        ids = tokens(1, a.prefill, vocab, 1)
        model(ids[:, :16], use_cache=False)  # warm-up
        times = []
        for _ in range(a.repeat):
            t = time.perf_counter()
            model(ids, use_cache=False)
            times.append(time.perf_counter() - t)
        result["prefill_tokens_per_s"] = a.prefill / statistics.median(times)
        for b in [int(x) for x in a.decode_batches.split(",")]:
            prompt = tokens(b, a.prompt, vocab, 2)
            times = []
            for _ in range(a.repeat):
                t = time.perf_counter()
                out = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                     max_new_tokens=a.decode_tokens, min_new_tokens=a.decode_tokens,
                                     do_sample=False, pad_token_id=0)
                times.append(time.perf_counter() - t)
            assert out.shape[1] == a.prompt + a.decode_tokens
            # generate includes the prompt's prefill; the C++ side measures the same thing.
            result[f"decode_b{b}_tokens_per_s"] = b * a.decode_tokens / statistics.median(times)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps(result))


if __name__ == "__main__":
    main()
