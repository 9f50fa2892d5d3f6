#!/usr/bin/env bash
# ctest: `moeprune tokenize` gives PyPI tokenizers' ids (tokenizer_components.py) for NFD, NFKC,
# NFKD, StripAccents, Lowercase, Digits, WhitespaceSplit and overlapping added tokens, on a
# 110 KB text holding every assigned Unicode category and on short texts.
#   tokenizer_components.sh MOEPRUNE FIXTURES TRANSFORMERS_VERSION
set -euo pipefail
cli="$1" fixtures="$2" version="$3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d /tmp/moeprune-tokenizer-components-XXXXXX)"
trap 'rm -rf "$work"' EXIT
"$here/../../scripts/hf_python" "$version" "$here/tokenizer_components.py" "$fixtures" "$work"
one_per_line() { tr -s '[:space:]' '\n' < "$1" | sed '/^$/d'; }
failures=0 checked=0
for tokenizer in "$work"/*.json; do
  name="$(basename "$tokenizer" .json)"
  for text in "$work"/*.txt; do
    text_name="$(basename "$text" .txt)"
    "$cli" tokenize "$tokenizer" --file "$text" --no-special --out "$work/ours.ids" > /dev/null
    checked=$((checked + 1))
    one_per_line "$work/ours.ids" > "$work/ours.lines"
    one_per_line "$work/$name.$text_name.ids" > "$work/theirs.lines"
    if ! cmp -s "$work/ours.lines" "$work/theirs.lines"; then
      echo "$name on $text_name: ids differ from tokenizers' (first lines of the diff):" >&2
      diff "$work/ours.lines" "$work/theirs.lines" | head -n 6 >&2 || true
      failures=$((failures + 1))
    fi
  done
done
echo "$((checked - failures)) of $checked tokenizer x text pairs give tokenizers' ids"
exit $((failures > 0))
