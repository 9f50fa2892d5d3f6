#!/usr/bin/env bash
# ctest: moeprune's RTN quantisation and pack-quantized encoding against the PyPI
# compressed-tensors 0.14.0.1 (check_compressed_tensors_pack.py says what is compared).
#   compressed_tensors_pack.sh MOEPRUNE_TESTS
set -euo pipefail
tests="$1"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d /tmp/moeprune-ct-pack-XXXXXX)"
trap 'rm -rf "$work"' EXIT
MOEPRUNE_CT_PACK_OUT="$work/samples.safetensors" "$tests" "[.ct_pack_export]" > "$work/export.log" ||
  { cat "$work/export.log" >&2; exit 1; }
"$here/../../scripts/compressed_tensors_python" "$here/check_compressed_tensors_pack.py" \
  "$work/samples.safetensors"
