#!/usr/bin/env bash
# ctest: resumable long jobs. `moeprune score`, `prune --plan-only` (REAP on calibration ids),
# `eval --json` and `merge`, each killed with SIGKILL right after decoder layer K was journaled
# (MOEPRUNE_JOURNAL_KILL_AFTER, stream_journal.h) and started again with the same arguments,
# resume from "<output>.journal" and write exactly what an uninterrupted run writes (score and
# plan byte for byte; eval's numbers, its timing fields aside), leaving no journal behind. A
# journal of another run (other arguments), or one whose usage or activations files are gone, is
# refused and kept.
#   cli_resume.sh MOEPRUNE FIXTURE_DIR IDS
set -euo pipefail
cli="$1" fixture="$2" ids="$3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d /tmp/moeprune-resume-XXXXXX)"
trap 'rm -rf "$work"' EXIT
cd "$work"
calibration=(--calibration "$ids" --samples 2 --seq-len 5 --batch-size 1)
killed_then_resumed() {  # killed_then_resumed K OUTPUT COMMAND...
  local k="$1" out="$2"
  shift 2
  if MOEPRUNE_JOURNAL_KILL_AFTER="$k" "$@" > killed.log 2>&1; then
    echo "the run was not killed after layer $k" >&2
    exit 1
  fi
  test ! -e "$out"
  grep -q "\"layers_done\": $k" "$out.journal/journal.json"
  "$@" > resumed.log 2>&1 || { cat resumed.log >&2; exit 1; }
  grep -q "resuming after decoder layer $k" resumed.log
  test ! -e "$out.journal"
}
# The fixture has 3 decoder layers (a dense one, then two MoE layers).
for k in 1 2; do
  "$cli" score --finetuned "$fixture" --criterion reap "${calibration[@]}" --out full.json \
    > /dev/null
  killed_then_resumed "$k" resumed.json \
    "$cli" score --finetuned "$fixture" --criterion reap "${calibration[@]}" --out resumed.json
  cmp full.json resumed.json
  "$cli" prune --finetuned "$fixture" --criterion reap "${calibration[@]}" \
    --experts-per-layer 2 --plan-only plan-full.json > /dev/null
  killed_then_resumed "$k" plan-resumed.json \
    "$cli" prune --finetuned "$fixture" --criterion reap "${calibration[@]}" \
    --experts-per-layer 2 --plan-only plan-resumed.json
  cmp plan-full.json plan-resumed.json
  "$cli" eval "$fixture" "$ids" --context 4 --json eval-full.json > /dev/null
  killed_then_resumed "$k" eval-resumed.json \
    "$cli" eval "$fixture" "$ids" --context 4 --json eval-resumed.json
  python3 - eval-full.json eval-resumed.json <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for timing in ("seconds", "peak_rss_mb"):
    a.pop(timing), b.pop(timing)
if a != b:
    sys.exit(f"resumed eval differs: {a} vs {b}")
PY
  rm -f ./*.json
done
# merge: its journal keeps the calibration pass (killed after decoder layer 1, 2 or 3, the whole
# pass) and then each merged MoE layer (killed after the first of the two); the folder resumed
# equals, file for file and byte for byte, an uninterrupted run's.
merge=(merge "$fixture" "${calibration[@]}" --groups-per-layer 2 --scratch-dir "$work")
"$cli" "${merge[@]}" --out merged-full > /dev/null
for k in 1 2 3; do
  killed_then_resumed "$k" merged-resumed "$cli" "${merge[@]}" --out merged-resumed
  diff -r merged-full merged-resumed
  rm -rf merged-resumed
done
if MOEPRUNE_JOURNAL_KILL_AFTER_MERGED=1 "$cli" "${merge[@]}" --out merged-resumed \
  > killed.log 2>&1; then
  echo "the merge was not killed after its first merged layer" >&2
  exit 1
fi
test ! -e merged-resumed
kept=(merged-resumed.journal/merged-*.safetensors)
((${#kept[@]} == 1))
"$cli" "${merge[@]}" --out merged-resumed > resumed.log 2>&1 || { cat resumed.log >&2; exit 1; }
grep -q "1 MoE layers merged by the interrupted run" resumed.log
test ! -e merged-resumed.journal
diff -r merged-full merged-resumed
# A journal with files gone is refused, naming what is missing, and kept as it is.
MOEPRUNE_JOURNAL_KILL_AFTER=2 "$cli" "${merge[@]}" --out "$work/broken" > /dev/null 2>&1 || true
rm "$work"/broken.journal/usage-*.safetensors
"$here/expect_refusal.sh" --untouched "$work/broken.journal/journal.json" \
  "broken.journal: the journal has decoder layer 1 done but not its routing usage" -- \
  "$cli" "${merge[@]}" --out "$work/broken"
rm "$work/broken.journal/activations-2.safetensors"
"$here/expect_refusal.sh" --untouched "$work/broken.journal/journal.json" \
  "broken.journal: the journal names layer 2 but its activations are missing" -- \
  "$cli" "${merge[@]}" --out "$work/broken"
# An existing output folder is refused before any work: no journal is started beside it.
mkdir "$work/existing"
"$here/expect_refusal.sh" "already exists; choose a new output folder" -- \
  "$cli" "${merge[@]}" --out "$work/existing"
test ! -e "$work/existing.journal"
if ls "$work"/moeprune-merged-* > /dev/null 2>&1; then
  echo "scratch files were left behind" >&2
  exit 1
fi
# A journal of another run is refused, named, and left as it was.
MOEPRUNE_JOURNAL_KILL_AFTER=1 "$cli" score --finetuned "$fixture" --criterion reap \
  "${calibration[@]}" --out "$work/other.json" > /dev/null 2>&1 || true
"$here/expect_refusal.sh" --untouched "$work/other.json.journal/journal.json" \
  "other.json.journal: a journal of another run" -- \
  "$cli" score --finetuned "$fixture" --criterion frequency "${calibration[@]}" \
  --out "$work/other.json"
echo "score, prune and eval resumed after decoder layers 1 and 2, merge after 1, 2, 3 and a" \
  "merged layer, with identical output"
