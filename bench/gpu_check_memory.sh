#!/usr/bin/env bash
# Issue 15's GPU check: PyTorch under `vagus run --memory-limit 4GiB` on a real
# GPU. torch.cuda.mem_get_info() must report 4 GiB total, allocating 5 GiB must
# raise torch.cuda.OutOfMemoryError, and the process must go on; the same with
# the caching allocator's expandable segments (the VMM path: cuMemCreate and
# cuMemMap), and with pynvml inside the process under --nvml-view.
# Usage: bench/gpu_check_memory.sh BIN_DIR OUT_DIR   (BIN_DIR: release vagus and libvagus_shim.so)
set -u
BIN=$(cd "$1" && pwd); OUT=$2; mkdir -p "$OUT"
HERE=$(cd "$(dirname "$0")" && pwd)
PY="python3 $HERE/torch_check.py"
log() { echo "== $*"; }
log machine; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
for conf in "" "expandable_segments:True"; do
  log "vagus run --memory-limit 4GiB, PYTORCH_CUDA_ALLOC_CONF=$conf"
  PYTORCH_CUDA_ALLOC_CONF=$conf timeout 120 "$BIN/vagus" run --memory-limit 4GiB \
    --json-out "$OUT/memory_${conf:-default}.json" -- $PY memory 5 || echo "rc $?"
  python3 -c "import json; d=json.load(open('$OUT/memory_${conf:-default}.json')); print('refused', d['refused_allocations'], 'bytes', d['refused_bytes'], 'peak', d['peak_bytes'])"
done
log "pynvml inside the process, --nvml-view"
timeout 60 "$BIN/vagus" run --quiet --memory-limit 4GiB --nvml-view -- python3 -c "
import json, os, torch, pynvml
torch.ones(1 << 28, dtype=torch.uint8, device='cuda')
pynvml.nvmlInit(); h = pynvml.nvmlDeviceGetHandleByIndex(0); m = pynvml.nvmlDeviceGetMemoryInfo(h)
print(json.dumps({'total': m.total, 'used': m.used, 'me': os.getpid(),
  'procs': [[p.pid, p.usedGpuMemory] for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)]}))"
log done
