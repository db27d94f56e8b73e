#!/usr/bin/env bash
# The interposer's GPU check: PyTorch under `vagus run` on a real GPU, against
# torch.profiler; the launch-bound loop with and without the shim; vagus load.
# Usage: bench/gpu_check_shim.sh BIN_DIR OUT_DIR   (BIN_DIR: release vagus and libvagus_shim.so)
set -u
BIN=$(cd "$1" && pwd); OUT=$2; mkdir -p "$OUT"
HERE=$(cd "$(dirname "$0")" && pwd)
PY="python3 $HERE/torch_check.py"
log() { echo "== $*"; }
log machine; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"

log "launch counts: vagus run around 100 and 300 forward passes"
for n in 100 300; do
  timeout 120 "$BIN/vagus" run --quiet --json-out "$OUT/passes_$n.json" -- $PY passes $n || echo "rc $?"
  python3 -c "import json; d=json.load(open('$OUT/passes_$n.json')); print($n, 'launches', d['launches'], 'graph', d['graph_launches'], 'sampled', d['sampled_launches'], 'gpu_ms', round(d['gpu_time_ms'],3), 'kernel p50/p99 ms', d['kernel_ms']); [print('   ', t['launches'], round(t['gpu_time_ms'],3), round(t['occupancy'],3), t['name'][:70]) for t in d['top_kernels'][:8]]"
done
log "torch.profiler, 200 passes (no shim)"
timeout 120 $PY profile 200 | tee "$OUT/profile.json"

log "launch-bound loop, 200k adds: with and without the shim, alternating"
for i in 1 2 3; do
  echo -n "plain  "; timeout 120 $PY loop 200000
  echo -n "shim   "; VAGUS_SHM_DIR=/tmp LD_PRELOAD="$BIN/libvagus_shim.so" timeout 120 $PY loop 200000
done | tee "$OUT/loop.txt"

log "vagus load under vagus run (real driver)"
timeout 60 "$BIN/vagus" run --json-out "$OUT/load_run.json" -- "$BIN/vagus" load --qps 200 --duration 3s --kernels 4 --grid 1056 --work-cycles 200000 --json
log done
