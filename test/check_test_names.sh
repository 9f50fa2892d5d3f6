#!/usr/bin/env bash
# ctest: no Catch test name holds a ';'. catch_discover_tests registers each case under its name,
# and CMake cuts a name at ';' (a list separator), so such a case would run under a filter that
# matches nothing and pass without running.
#   check_test_names.sh TEST_DIR
set -euo pipefail
if grep -rn --include='*.cpp' 'TEST_CASE("[^"]*;' "$1"; then
  echo "the Catch test names above hold ';': ctest would not run them" >&2
  exit 1
fi
echo "check_test_names: ok"
