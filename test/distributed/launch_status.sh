#!/usr/bin/env bash
# scripts/launch reports how its ranks ended, with bash 5.1's `wait -n -p` and with the polling
# that older bash gets (MOEPRUNE_LAUNCH_POLL=1): a failing rank's status stops the others and
# becomes the exit status; all ranks succeeding gives 0; --timeout gives 124.
set -uo pipefail
launch="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/scripts/launch"
failures=0
expect() {  # expect MODE WANT_STATUS WANT_TEXT -- launch arguments...
  local mode="$1" want="$2" text="$3"
  shift 4
  local out rc
  out="$(MOEPRUNE_LAUNCH_POLL="$mode" "$launch" "$@" 2>&1)"
  rc=$?
  if [ "$rc" -ne "$want" ] || ! grep -qF -- "$text" <<<"$out"; then
    echo "FAIL (poll=$mode) launch $*: status $rc (want $want), output:"
    echo "$out"
    echo "(wanted a line with: $text)"
    failures=$((failures + 1))
  else
    echo "ok (poll=$mode): status $rc, '$text'"
  fi
}
# Rank 1 fails at once while rank 0 would run for a minute: launch stops rank 0 and exits 3.
# (The ranks expand $RANK themselves.)
# shellcheck disable=SC2016
{
  rank1_fails='if [ "$RANK" = 1 ]; then echo failing; exit 3; fi; sleep 60'
  all_pass='echo "rank $RANK of $WORLD_SIZE done"'
}
for mode in 0 1; do
  expect "$mode" 3 "rank 1 exited with status 3" -- -n 2 --timeout 50 bash -c "$rank1_fails"
  expect "$mode" 0 "[rank 2] rank 2 of 3 done" -- -n 3 bash -c "$all_pass"
  expect "$mode" 124 "timed out after 1 s" -- -n 2 --timeout 1 bash -c 'sleep 60'
done
[ "$failures" -eq 0 ] || { echo "$failures launch check(s) failed"; exit 1; }
echo "all launch checks passed"
