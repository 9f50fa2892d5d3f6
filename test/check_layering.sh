#!/usr/bin/env bash
# The dependency rule of docs/architecture.md, checked on every include of every file under
# moeprune/ and csrc/, in each form the compiler accepts: <moeprune/...> and "moeprune/...",
# csrc-relative ("hf/family.h"), and relative to the including file ("../io/x.h", "utf8.h").
# Each include is resolved to the file it names, that file's folder (its "wing": ops, routing,
# layers, distributed, io, text, pruning, compression, hf, models/lm, models/vision,
# models/seq2seq, train) is looked up in the table below, and anything not listed there as allowed
# is an error; so is a folder the table does not know, and a quoted include that names no file.
# Usage: check_layering.sh [ROOT]. Prints every offending include and fails if there is one.
set -u
root="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
cd "$root" || exit 2

# What each wing may use besides itself (the "may use" column of docs/architecture.md). ops may
# use one file of routing, the routing plan (the contract between the two): see allowed_file.
declare -A may_use=(
  [ops]=""
  [routing]=""
  [layers]="ops routing io"
  [distributed]="layers routing ops io"
  [io]=""
  [text]="io"
  [pruning]="layers routing ops io"
  [compression]="pruning layers routing ops io"
  [hf]="io pruning layers routing ops"
  [models/lm]="hf compression pruning distributed layers routing ops io text"
  [models/vision]="hf compression pruning distributed layers routing ops io text"
  [models/seq2seq]="hf compression pruning distributed layers routing ops io text"
  [train]="models/lm models/vision models/seq2seq hf compression pruning distributed layers routing ops io text"
  # moeprune/moeprune.h and moeprune/version.h: the umbrella header includes everything.
  [umbrella]="train models/lm models/vision models/seq2seq hf compression pruning distributed layers routing ops io text"
)

# The wing of a file (a path relative to the root); empty outside moeprune/ and csrc/.
wing_of() {
  local rest
  case "$1" in
  moeprune/models/*/* | csrc/models/*/*)
    rest="${1#*/models/}"
    echo "models/${rest%%/*}"
    ;;
  moeprune/*/* | csrc/*/*)
    rest="${1#*/}"
    echo "${rest%%/*}"
    ;;
  moeprune/moeprune.h | moeprune/version.h) echo umbrella ;;
  # Any other file at the top of moeprune/ (the old flat paths were forwarding headers).
  moeprune/* | csrc/*) echo "top level" ;;
  *) echo "" ;;
  esac
}

# The file an include names, relative to the root, resolved as the compiler does: quoted forms
# first beside the including file, then on the include path (the root and csrc/); empty if none.
resolve() {
  local from_dir="$1" form="$2" name="$3" candidate
  if [ "$form" = '"' ]; then
    candidate="$(realpath -m --relative-to=. "$from_dir/$name")"
    [ -f "$candidate" ] && { echo "$candidate"; return; }
  fi
  for dir in . csrc; do
    candidate="$(realpath -m --relative-to=. "$dir/$name")"
    [ -f "$candidate" ] && { echo "$candidate"; return; }
  done
  echo ""
}

include_re='^[[:space:]]*#[[:space:]]*include[[:space:]]*([<"])([^>"]+)[>"]'
status=0
fail() {
  echo "$1"
  status=1
}

while IFS= read -r file; do
  from="$(wing_of "$file")"
  if [ -z "${may_use[$from]+known}" ]; then
    fail "$file: folder '$from' is not in check_layering.sh's table (add it there and to docs/architecture.md)"
    continue
  fi
  line_no=0
  while IFS= read -r line; do
    line_no=$((line_no + 1))
    [[ "$line" =~ $include_re ]] || continue
    form="${BASH_REMATCH[1]}"
    name="${BASH_REMATCH[2]}"
    # Angle includes of other libraries (torch, the standard library, ...) are not ours.
    if [ "$form" = "<" ] && [ "${name#moeprune/}" = "$name" ]; then
      continue
    fi
    target="$(resolve "$(dirname "$file")" "$form" "$name")"
    if [ -z "$target" ]; then
      fail "$file:$line_no: $line names no file under the root or csrc/"
      continue
    fi
    to="$(wing_of "$target")"
    [ -z "$to" ] && continue # outside the library (a generated or test file)
    [ "$to" = "$from" ] && continue
    [ "$from" = ops ] && [ "$target" = moeprune/routing/routing_plan.h ] && continue
    case " ${may_use[$from]} " in
    *" $to "*) ;;
    *) fail "$file:$line_no: $line: $from/ may not use $to/ ($target)" ;;
    esac
  done <"$file"
done < <(find moeprune csrc -type f \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \) | sort)

if [ "$status" -ne 0 ]; then
  echo "check_layering: the includes above break the dependency rule (docs/architecture.md)"
else
  echo "check_layering: ok"
fi
exit "$status"
