#!/usr/bin/env bash
# The small-model target of the vision issue: pre-train small_vmoe and its dense baseline on
# Fashion-MNIST (10 epochs each) and summarise accuracy, time to 88%, and training and inference
# throughput in bench/results/fmnist_small_models.json with the machine's description.
# Usage: bench/fmnist_target.sh [build-dir]   (build first: ./scripts/test or ./scripts/demo)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build}"
out="$root/bench/results"
mkdir -p "$out"
for model in small_vmoe small_dense; do
  "$build/experiments/vmoe_train" --model "$model" --epochs 10 --out "/tmp/moeprune_$model.pt" \
    --log "$out/fmnist_${model}_train.json"
done
python3 - "$out" <<'PY'
import json, os, platform, subprocess, sys
out = sys.argv[1]
def cpu():
    for line in open('/proc/cpuinfo'):
        if line.startswith('model name'):
            return line.split(':', 1)[1].strip()
summary = {'benchmark': 'fmnist_target', 'target': '>= 88% test top-1 within 10 minutes',
           'machine': {'host': platform.node(), 'cpu': cpu(), 'logical_cores': os.cpu_count()},
           'models': {}}
for model in ('small_vmoe', 'small_dense'):
    log = json.load(open(f'{out}/fmnist_{model}_train.json'))
    elapsed, reached = 0.0, None
    for e in log['epochs']:
        elapsed += e['seconds'] + e['eval']['seconds']
        if reached is None and e['eval']['top1'] >= 0.88:
            reached = {'epoch': e['epoch'], 'minutes': elapsed / 60}
    last = log['epochs'][-1]
    summary['models'][model] = {
        'final_top1': last['eval']['top1'], 'final_top5': last['eval']['top5'],
        'minutes_total': elapsed / 60, 'reached_88': reached,
        'train_images_per_second': sum(e['images_per_second'] for e in log['epochs']) / len(log['epochs']),
        'eval_images_per_second': last['eval']['images_per_second']}
path = f'{out}/fmnist_small_models.json'
json.dump(summary, open(path + '.tmp', 'w'), indent=2)
os.replace(path + '.tmp', path)
print(json.dumps(summary, indent=2))
PY
