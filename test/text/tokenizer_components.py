"""Reference ids from PyPI `tokenizers` for normalizers, pre-tokenizers and added tokens the
fixture tokenizers do not use, on texts over 100 KB that hold every assigned Unicode category.

    tokenizer_components.py FIXTURES OUT

Variants of the byte-level BPE fixtures (FIXTURES/gpt2.json, qwen2.json), each written to
OUT/<name>.json with the ids `tokenizers` gives (encode, add_special_tokens=False) in
OUT/<name>.ids, for every text OUT/<text>.txt: NFD, NFKC, NFKD, NFD + StripAccents + Lowercase,
Digits (individual and grouped) and WhitespaceSplit before ByteLevel, and added tokens that
overlap one another and the vocabulary. tokenizer_components.sh compares `moeprune tokenize`.
"""

import json
import random
import sys
import unicodedata
from pathlib import Path

import tokenizers
from tokenizers import Tokenizer

EXPECTED_VERSION = "0.22.2"


def category_sample(rng):
    """Up to 40 characters of every general category but surrogates (not UTF-8), unassigned and
    private use, among the characters Unicode 3.2 already had: the normalisation tables of
    utf8proc (Debian's) and of tokenizers' Rust crate come from different Unicode versions, and
    disagree on characters added since (U+107B4, Unicode 14, has an NFKC mapping in one only)."""
    by_category = {}
    for cp in range(0x110000):
        c = chr(cp)
        cat = unicodedata.category(c)
        if cat in ("Cs", "Cn", "Co") or unicodedata.ucd_3_2_0.category(c) == "Cn":
            continue
        by_category.setdefault(cat, []).append(c)
    chars = []
    for cat, members in sorted(by_category.items()):
        chars.extend(rng.sample(members, min(40, len(members))))
    return sorted(by_category), chars


def texts(rng):
    categories, chars = category_sample(rng)
    words = ["Mixture", "of", "experts", "ÉCOLE", "Straße", "ﬁnal", "Ⅻ", "①②", "x²", "１２３",
             "naïve", "Å", "Å", "ǅ", "İstanbul", "ΣΊΣΥΦΟΣ", "12345", "3.14159", "2026-12-07",
             "\t", "  ", "\n", "\r\n", "\u00a0", "\u3000", "日本語", "한국어", "😀👍🏽", "👩‍👩‍👧",
             "<x>", "<x><y>", "abc", "abcd", "bcd", "ab", "[DAY]", "a  \u180ex"]
    long_parts = []
    size = 0
    while size < 110_000:
        piece = "".join(rng.choice(chars) for _ in range(rng.randint(1, 6)))
        part = rng.choice([piece, rng.choice(words), " ", rng.choice(words) + " "])
        long_parts.append(part)
        size += len(part.encode())
    return categories, {
        "long": "".join(long_parts),
        "words": " ".join(words),
        "digits": "a1b22c333d4444 55555 0.5 1,000,000 ٣٤٥ ४५६",
        "spaces": "  leading and   inner\t\ttabs\n\nnew lines  \u2003 trailing  ",
    }


def variant(base, normalizer=None, pre_tokenizer=None, added=None):
    j = json.loads(json.dumps(base))
    if normalizer is not None:
        j["normalizer"] = normalizer
    if pre_tokenizer is not None:
        j["pre_tokenizer"] = pre_tokenizer
    tok = Tokenizer.from_str(json.dumps(j))
    if added:
        tok.add_tokens([tokenizers.AddedToken(t, normalized=n) for t, n in added])
        tok.add_special_tokens([tokenizers.AddedToken("<x><y>", normalized=False)])
    return tok


def main(fixtures, out):
    if tokenizers.__version__ != EXPECTED_VERSION:
        sys.exit(f"tokenizers {EXPECTED_VERSION} expected, found {tokenizers.__version__}")
    fixtures, out = Path(fixtures), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gpt2 = json.loads((fixtures / "gpt2.json").read_text())
    qwen2 = json.loads((fixtures / "qwen2.json").read_text())
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    seq = lambda *parts: {"type": "Sequence", "normalizers": list(parts)}
    pre = lambda *parts: {"type": "Sequence", "pretokenizers": list(parts)}
    variants = {
        "nfd": variant(gpt2, normalizer={"type": "NFD"}),
        "nfkc": variant(gpt2, normalizer={"type": "NFKC"}),
        "nfkd": variant(gpt2, normalizer={"type": "NFKD"}),
        "strip_lower": variant(gpt2, normalizer=seq({"type": "NFD"}, {"type": "StripAccents"},
                                                    {"type": "Lowercase"})),
        "digits_each": variant(gpt2, pre_tokenizer=pre(
            {"type": "Digits", "individual_digits": True}, byte_level)),
        "digits_runs": variant(gpt2, pre_tokenizer=pre(
            {"type": "Digits", "individual_digits": False}, byte_level)),
        "whitespace_split": variant(gpt2, pre_tokenizer=pre({"type": "WhitespaceSplit"},
                                                           byte_level)),
        "overlapping_added": variant(
            qwen2, added=[("ab", False), ("abc", False), ("bcd", True), ("<x>", False),
                          ("ÉCOLE", True)]),
    }
    categories, text_by_name = texts(random.Random(7))
    for name, text in text_by_name.items():
        (out / f"{name}.txt").write_bytes(text.encode())
    for name, tok in variants.items():
        (out / f"{name}.json").write_text(tok.to_str())
        for text_name, text in text_by_name.items():
            ids = tok.encode(text, add_special_tokens=False).ids
            (out / f"{name}.{text_name}.ids").write_text(" ".join(map(str, ids)) + "\n")
    print(f"{len(variants)} tokenizers x {len(text_by_name)} texts (long: "
          f"{len(text_by_name['long'].encode())} bytes, {len(categories)} Unicode categories: "
          f"{' '.join(categories)})")


if __name__ == "__main__":
    main(*sys.argv[1:])
