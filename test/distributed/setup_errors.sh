#!/usr/bin/env bash
# The process group's set-up errors that need two processes (ctest distributed_setup_errors):
# a peer started with another WORLD_SIZE, and two processes claiming one RANK. Each case starts
# `ep_worker join` processes with hand-made environments and looks for the error message.
set -uo pipefail
worker="$1"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
port() { echo $((32000 + RANDOM % 8000)); }
fail=0
expect() {  # expect NAME MESSAGE: one of the logs holds MESSAGE
  if grep -qF "$2" "$dir"/*.log; then echo "ok   $1"; else echo "FAIL $1: no '$2' in"; cat "$dir"/*.log; fail=1; fi
  rm -f "$dir"/*.log
}
common=(MASTER_ADDR=127.0.0.1)

p=$(port)
env "${common[@]}" MASTER_PORT="$p" RANK=0 WORLD_SIZE=2 "$worker" join > "$dir/0.log" 2>&1 &
env "${common[@]}" MASTER_PORT="$p" RANK=1 WORLD_SIZE=3 "$worker" join > "$dir/1.log" 2>&1
wait
expect "another WORLD_SIZE" "every process needs the same WORLD_SIZE"

p=$(port)
env "${common[@]}" MASTER_PORT="$p" RANK=0 WORLD_SIZE=2 "$worker" join > "$dir/0.log" 2>&1 &
sleep 0.5  # rank 0 serves the rendezvous first
env "${common[@]}" MASTER_PORT="$p" RANK=1 WORLD_SIZE=2 "$worker" join > "$dir/1.log" 2>&1 &
env "${common[@]}" MASTER_PORT="$p" RANK=1 WORLD_SIZE=2 "$worker" join > "$dir/1b.log" 2>&1
wait
expect "one RANK twice" "two processes were started with RANK 1"
exit "$fail"
