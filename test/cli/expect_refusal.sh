#!/usr/bin/env bash
# ctest: a command must refuse. It runs in a fresh empty folder (where its relative output paths
# point) and must exit with a status in 1..125 (not 0, not a crash or signal), print MESSAGE (a
# fixed string) and write nothing: the folder stays empty and every --untouched FILE keeps its
# bytes.
#   expect_refusal.sh [--untouched FILE]... MESSAGE -- COMMAND [ARGS...]
set -uo pipefail
untouched=()
while [ "${1:-}" = --untouched ]; do
  untouched+=("$2")
  shift 2
done
message="$1"
shift
[ "${1:-}" = -- ] && shift
work="$(mktemp -d /tmp/moeprune-refusal-XXXXXX)"
log="$(mktemp /tmp/moeprune-refusal-log-XXXXXX)"
trap 'rm -rf "$work" "$log"' EXIT
before=()
for f in "${untouched[@]}"; do
  before+=("$(sha256sum "$f")")
done
(cd "$work" && exec "$@") > "$log" 2>&1
status=$?
problems=()
if ((status == 0)); then
  problems+=("exited with status 0")
elif ((status > 125)); then
  problems+=("exited with status $status (a crash or a signal, not a refusal)")
fi
grep -qF -- "$message" "$log" || problems+=("did not print: $message")
written="$(cd "$work" && find . -mindepth 1 | head -n 5)"
if [ -n "$written" ]; then
  problems+=("wrote into its working folder: $written")
fi
for i in "${!untouched[@]}"; do
  [ "$(sha256sum "${untouched[$i]}")" = "${before[$i]}" ] || problems+=("changed ${untouched[$i]}")
done
if ((${#problems[@]})); then
  printf 'refusal test failed: %s\n' "${problems[@]}" >&2
  echo "--- command: $*  (status $status); its output:" >&2
  cat "$log" >&2
  exit 1
fi
echo "refused with status $status: $(grep -F -- "$message" "$log" | head -n 1)"
