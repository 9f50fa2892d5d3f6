"""Makes the tiny tokenizers and the reference token ids that the C++ tokenizer tests read.

    scripts/hf_python 4.57.6 scripts/make_tokenizer_fixtures.py test/fixtures/tokenizers

Needs PyPI `tokenizers` 0.22.2 (what transformers 4.57.6 installs) and Debian's sentencepiece
0.1.97 command line tools (`spm_train`, `spm_encode`, `spm_decode`); both versions are checked.

Training is not bit-for-bit repeatable (BPE and spm_train break ties differently from run to
run), so a rerun changes the llama and spm files; the committed files and reference.json are
made together by one run and always agree.

Writes, all trained on the small multilingual corpus below (the test texts are not in it):
  qwen2.json      byte-level BPE as Qwen2/Qwen3 ship it: NFC, the Qwen2 regex Split, ByteLevel
                  without its regex, ignore_merges, special tokens <|endoftext|> <|im_start|>
                  <|im_end|>, plus added tokens that exercise lstrip (<mask>), rstrip (<sep>),
                  single_word ([DAY]) and a normalized non-special token (Hello!)
  gpt2.json       byte-level BPE as GPT-2/OLMoE: ByteLevel with its own regex and a prefix space,
                  a TemplateProcessing post-processor that adds <|bos|>
  deepseek.json   byte-level BPE with DeepSeek-V3's pre-tokenizer: Splits for up-to-3 digits,
                  CJK runs and its main pattern, then ByteLevel without regex
  llama.json      Llama/Mixtral's legacy form: Prepend + Replace normalizers, no pre-tokenizer,
                  BPE with byte_fallback and fuse_unk over <0x00>..<0xFF>, the Replace /
                  ByteFallback / Fuse / Strip decoder, <s> added by TemplateProcessing
  llama_metaspace.json  the same model in the newer form: Metaspace pre-tokenizer (prepend
                  scheme "first", no split) instead of the normalizers
  chars96.json    one token per printable ASCII character (ids 1..95) and <unk> (0) for the rest,
                  no merges: a tokenizer for the 96-token language-model fixtures of
                  scripts/make_lm_fixtures.py (the command-line tests give them text)
  spm.model       a SentencePiece BPE model (spm_train, Llama's settings: identity
                  normalization, byte fallback, split digits, extra whitespace kept)
  reference.json  for each tokenizer and text: ids with and without special tokens and the
                  decoded strings (with and without skip_special_tokens); for spm.model the
                  ids and decoding of spm_encode / spm_decode on the one-line texts
"""

import json
import os
import subprocess
import sys
import tempfile

import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers
from tokenizers import AddedToken

TOKENIZERS_VERSION = "0.22.2"
SPM_VERSION = "sentencepiece 0.1.97"

# Training text, written for this fixture: several scripts, numbers, code and punctuation.
CORPUS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
    "Mixture-of-experts layers route every token to a few experts out of many.",
    "Pruning removes the experts whose router rows changed least during fine-tuning.",
    "We measured 3.5 bits per byte on 2048 tokens, then 12 percent fewer after 1000 steps.",
    "Der schnelle braune Fuchs springt über den faulen Hund, und die Katze schläft.",
    "Die Gewichte werden Schicht für Schicht gelesen, damit der Speicher klein bleibt.",
    "El rápido zorro marrón salta sobre el perro perezoso mientras el gato duerme.",
    "Los expertos que cambian poco durante el ajuste fino se pueden eliminar sin pérdida.",
    "Le renard brun rapide saute par-dessus le chien paresseux; c'est très élégant.",
    "O rápido gato não dorme à noite, mas o cão descansa na varanda ensolarada.",
    "Быстрая коричневая лиса прыгает через ленивую собаку, а кошка спит.",
    "機械学習のモデルは多くの専門家を持っています。東京は晴れです。",
    "混合专家模型把每个词元送到少数专家那里。今天天气很好。",
    "def route(tokens, k=2):\n    return sorted(tokens, key=score)[:k]  # top-k\n",
    "for (int i = 0; i < n; ++i) { sum += x[i] * w[i]; }",
    "Email me at someone@example.org or call +1 (555) 010-9999 before 5pm.",
    "I'm sure they'll say we've done it, but he'd disagree and you're right.",
    "Emoji are text too: 🙂 🚀 🎉 and numbers like 42, 1e-6 and 3,141,592.",
]
CORPUS = CORPUS * 8

# Test texts (not in the corpus): scripts, emoji with modifiers and joiners, digits in several
# scripts, whitespace runs, decomposed accents, contractions, special tokens.
TEXTS = [
    "Hello world",
    "",
    "   ",
    "  leading and trailing spaces  ",
    "tabs\tand\t\tnew\nlines\n\n\nand  runs   of    spaces",
    "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.",
    "¿Dónde está el niño? ¡Aquí!",
    "Cafe\u0301 vs Café: decomposed and composed accents",
    "数据并行和专家并行可以一起使用。",
    "日本語のテキストとカタカナ、ひらがな。",
    "Привет, мир! Как дела?",
    "مرحبا بالعالم ١٢٣٤٥",
    "family 👨\u200d👩\u200d👧 thumbs 👍🏽 flags 🇪🇸 rocket🚀!!",
    "digits 1234567 3.14159 0x1F 1,000,000 ٣٤٥ and ½",
    "don't DON'T I'LL we've they'd it's",
    "<|im_start|>user\nHola, ¿qué tal?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text<|endoftext|>",
    "a <mask> b and <sep>   c",
    "x[DAY]y but x [DAY] y",
    "Hello! and hello! said Hello!",
    "<s>Hi</s> there <unk>",
    "unknown glyphs ☃ ♞ ⌘ ∑ → ✓",
]


def train_byte_level(pre_tokenizer, normalizer, special_tokens):
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
DEEPSEEK_MAIN = (
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def make_qwen2():
    tok = train_byte_level(
        pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        ),
        normalizers.NFC(),
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.model.ignore_merges = True
    tok.add_tokens(
        [
            AddedToken("<mask>", lstrip=True, special=True, normalized=False),
            AddedToken("<sep>", rstrip=True, special=True, normalized=False),
            AddedToken("[DAY]", single_word=True, special=False, normalized=False),
            AddedToken("Hello!", special=False, normalized=True),
        ]
    )
    return tok


def make_gpt2():
    tok = train_byte_level(
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
        normalizers.NFC(),
        ["<|endoftext|>", "<|bos|>"],
    )
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=True),
            processors.TemplateProcessing(
                single="<|bos|> $A", special_tokens=[("<|bos|>", tok.token_to_id("<|bos|>"))]
            ),
        ]
    )
    return tok


def make_deepseek():
    return train_byte_level(
        pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(r"\p{N}{1,3}"), behavior="isolated", invert=False),
                pre_tokenizers.Split(
                    Regex("[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"),
                    behavior="isolated",
                    invert=False,
                ),
                pre_tokenizers.Split(Regex(DEEPSEEK_MAIN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        ),
        None,
        ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<|endoftext|>"],
    )


def make_llama_pair():
    """Trains a Metaspace BPE, then gives it Llama's vocabulary layout: <unk> <s> </s>, the 256
    byte tokens <0x00>..<0xFF>, then the learned pieces; characters outside the 70 most frequent
    fall back to bytes."""
    base = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=450,
        special_tokens=["<unk>", "<s>", "</s>"],
        limit_alphabet=70,
        show_progress=False,
    )
    base.train_from_iterator(CORPUS, trainer=trainer)
    spec = json.loads(base.to_str())
    vocab = spec["model"]["vocab"]
    layout = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        layout[f"<0x{b:02X}>"] = 3 + b
    for piece, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        if piece not in layout:
            layout[piece] = len(layout)
    spec["model"]["vocab"] = layout
    for added in spec["added_tokens"]:
        added["id"] = layout[added["content"]]
    decoder = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    template = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<s>", "type_id": 1}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
    }
    legacy = dict(spec)
    legacy["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ],
    }
    legacy["pre_tokenizer"] = None
    legacy["decoder"] = decoder
    legacy["post_processor"] = template
    metaspace = dict(spec)
    metaspace["normalizer"] = None
    metaspace["pre_tokenizer"] = {
        "type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False
    }
    metaspace["decoder"] = decoder
    metaspace["post_processor"] = template
    return (Tokenizer.from_str(json.dumps(legacy)), Tokenizer.from_str(json.dumps(metaspace)))


def make_chars96():
    vocab = {"<unk>": 0}
    for c in range(32, 127):
        vocab[chr(c)] = len(vocab)
    return Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=False))


def reference_for(tok):
    cases = []
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=True).ids
        plain = tok.encode(text, add_special_tokens=False).ids
        cases.append(
            {
                "ids": ids,
                "ids_plain": plain,
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decoded_skip": tok.decode(ids, skip_special_tokens=True),
            }
        )
    return cases


def run(args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def make_spm(out):
    version = run(["spm_train", "--version"]).strip()
    assert version == SPM_VERSION, f"need {SPM_VERSION}, found {version}"
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            for line in CORPUS:
                f.write(line.replace("\n", " ") + "\n")
        prefix = os.path.join(tmp, "spm")
        run(
            [
                "spm_train", f"--input={corpus}", f"--model_prefix={prefix}",
                "--model_type=bpe", "--vocab_size=400", "--character_coverage=0.98",
                "--byte_fallback=true", "--split_digits=true",
                "--normalization_rule_name=identity", "--remove_extra_whitespaces=false",
                "--add_dummy_prefix=true", "--num_threads=1", "--random_seed=1",
                "--unk_id=0", "--bos_id=1", "--eos_id=2", "--pad_id=-1",
            ]
        )
        with open(prefix + ".model", "rb") as f:
            model = f.read()
    path = os.path.join(out, "spm.model")
    with open(path, "wb") as f:
        f.write(model)
    one_line = [t for t in TEXTS if "\n" not in t]
    encoded = run(["spm_encode", f"--model={path}", "--output_format=id"],
                  input="".join(t + "\n" for t in one_line)).split("\n")
    ids = [[int(i) for i in line.split()] for line in encoded[: len(one_line)]]
    decoded = run(["spm_decode", f"--model={path}", "--input_format=id"],
                  input="".join(" ".join(map(str, i)) + "\n" for i in ids)).split("\n")
    return [{"text": t, "ids": i, "decoded": d} for t, i, d in zip(one_line, ids, decoded)]


def main():
    out = sys.argv[1]
    assert tokenizers.__version__ == TOKENIZERS_VERSION, (
        f"need tokenizers {TOKENIZERS_VERSION}, found {tokenizers.__version__}")
    os.makedirs(out, exist_ok=True)
    llama, llama_metaspace = make_llama_pair()
    made = {
        "qwen2": make_qwen2(),
        "gpt2": make_gpt2(),
        "deepseek": make_deepseek(),
        "llama": llama,
        "llama_metaspace": llama_metaspace,
        "chars96": make_chars96(),
    }
    reference = {"texts": TEXTS, "tokenizers": {}}
    for name, tok in made.items():
        tok.save(os.path.join(out, f"{name}.json"), pretty=False)
        # The reference is what the saved file gives when loaded again.
        reloaded = Tokenizer.from_file(os.path.join(out, f"{name}.json"))
        reference["tokenizers"][name] = reference_for(reloaded)
        print(f"{name}: vocab {reloaded.get_vocab_size()}", file=sys.stderr)
    reference["spm"] = make_spm(out)
    with open(os.path.join(out, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(reference, f, ensure_ascii=False, indent=None)
        f.write("\n")


if __name__ == "__main__":
    main()
