#!/usr/bin/env bash
# Makes the seed corpora (test/fuzz/corpus/<target>/) from the committed test fixtures and a few
# hand-written files. Rerun after a fixture changes; the output is committed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
fixtures="$here/../fixtures"
corpus="$here/corpus"
rm -rf "$corpus"
mkdir -p "$corpus"/{safetensors_file,safetensors_index,hf_config,idx_reader,cifar_reader,tokenizer_json}

# safetensors files: every dtype, and two small real checkpoints' tensors.
cp "$fixtures/hf/dtypes.safetensors" "$corpus/safetensors_file/dtypes.safetensors"
cp "$fixtures/lm/deepseek_v3_reference.safetensors" "$corpus/safetensors_file/deepseek_v3_reference.safetensors"
cp "$fixtures/hf/mixtral_ft_reference.safetensors" "$corpus/safetensors_file/mixtral_ft_reference.safetensors"

# The index of the three shards the harness links beside it.
cp "$fixtures/hf/mixtral_ft_sharded/model.safetensors.index.json" "$corpus/safetensors_index/"

# config.json of each fixture hf_config_fuzz.cpp lists (kFixtures), after its index byte.
i=0
for f in hf/mixtral_ft hf/mixtral_ft_fused hf/switch_ft lm/qwen2_moe lm/qwen3_moe lm/olmoe \
         lm/deepseek lm/deepseek_v2 lm/deepseek_v3 lm/glm4_moe seq2seq/switch_transformers; do
  # shellcheck disable=SC2059  # the format is the byte to write
  { printf "\\x$(printf %02x $i)"; cat "$fixtures/$f/config.json"; } > "$corpus/hf_config/$(printf %02d $i)-${f//\//_}.json"
  i=$((i + 1))
done

# IDX: 2 images of 2x3 (magic 2051) and 3 labels (2049), plain (first byte 0) and gzip (1).
images() { printf '\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00\x03'; printf '\x00\x10\x20\x30\x40\x50\x60\x70\x80\x90\xa0\xff'; }
labels() { printf '\x00\x00\x08\x01\x00\x00\x00\x03'; printf '\x00\x05\x09'; }
{ printf '\x00'; images; } > "$corpus/idx_reader/images"
{ printf '\x00'; labels; } > "$corpus/idx_reader/labels"
{ printf '\x01'; images | gzip -n -9; } > "$corpus/idx_reader/images.gz"
{ printf '\x01'; labels | gzip -n -9; } > "$corpus/idx_reader/labels.gz"

# CIFAR: two CIFAR-10 records (label byte + 3072 pixels; first byte 0), one CIFAR-100 record
# (coarse + fine label + 3072 pixels; first byte 1).
pixels() { head -c 3072 /dev/zero | tr '\0' "\\$(printf %03o "$1")"; }
{ printf '\x00'; printf '\x03'; pixels 7; printf '\x09'; pixels 200; } > "$corpus/cifar_reader/cifar10"
{ printf '\x01'; printf '\x04\x63'; pixels 33; } > "$corpus/cifar_reader/cifar100"
# tokenizer.json: each fixture tokenizer after a text (its length byte, then the text).
printf 'Hello world! 12 345 <|endoftext|> caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac  x' > "$corpus/text"
length=$(wc -c < "$corpus/text")
for f in "$fixtures"/tokenizers/*.json; do
  [ "$(basename "$f")" = reference.json ] && continue
  # shellcheck disable=SC2059  # the format is the byte to write
  { printf "\\$(printf %03o "$length")"; cat "$corpus/text" "$f"; } \
    > "$corpus/tokenizer_json/$(basename "$f")"
done
rm "$corpus/text"

echo "seed corpora in $corpus:"
du -sh "$corpus"/*
