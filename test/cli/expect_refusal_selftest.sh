#!/usr/bin/env bash
# ctest: expect_refusal.sh passes a real refusal and fails each way a refusal can be wrong: exit
# status 0, a crash (a signal), another message, a file written into its folder, a changed
# --untouched file.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
check="$here/expect_refusal.sh"
kept="$(mktemp /tmp/moeprune-refusal-selftest-XXXXXX)"
trap 'rm -f "$kept"' EXIT
echo "keep me" > "$kept"
failures=0
expect() {  # expect pass|fail DESCRIPTION ARGS...
  local want="$1" what="$2"
  shift 2
  if "$check" "$@" > /dev/null 2>&1; then got=pass; else got=fail; fi
  if [ "$got" != "$want" ]; then
    echo "expect_refusal.sh should $want: $what" >&2
    failures=$((failures + 1))
  fi
}
expect pass "a refusal" --untouched "$kept" "bad input" -- \
  sh -c 'echo "x: bad input" >&2; exit 1'
expect fail "status 0" "bad input" -- sh -c 'echo "x: bad input"; exit 0'
expect fail "a crash" "bad input" -- sh -c 'echo "x: bad input"; kill -SEGV $$'
expect fail "another message" "bad input" -- sh -c 'echo "x: other"; exit 1'
expect fail "a file written" "bad input" -- sh -c 'echo "x: bad input"; : > out.json; exit 1'
expect fail "a changed input" --untouched "$kept" "bad input" -- \
  sh -c "echo 'x: bad input'; echo more >> '$kept'; exit 1"
((failures == 0)) && echo "expect_refusal.sh: 6 of 6 cases as expected"
exit $((failures > 0))
