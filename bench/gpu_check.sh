#!/usr/bin/env bash
# The foundation GPU check: run `vagus load` and the cudart-like client on the
# real NVIDIA driver and, with the same flags, on gpusim; probe MPS.
# Usage: bench/gpu_check.sh BIN_DIR OUT_DIR
#   BIN_DIR holds release builds of vagus, libgpusim_cuda.so, libgpusim_nvml.so,
#   gpusim-mps-control and the compiled tests/clients/cudart_like.c (and,
#   optionally, tests/clients/api_surface.c).
set -u
BIN=$(cd "$1" && pwd); OUT=$2; mkdir -p "$OUT"
log() { echo "== $*"; }
log machine; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv 2>&1
log mps-control; command -v nvidia-cuda-mps-control || echo "nvidia-cuda-mps-control: not found"
SIMLIB=$("$BIN/vagus" gpusim libdir) || exit 1
export GPUSIM_STATE=/tmp/gpusim-check.state
FLAGS="--qps 200 --duration 5s --kernels 4 --grid 1056 --block 256 --work-cycles 200000 --json"

log "vagus load, real driver"; timeout 60 "$BIN/vagus" load $FLAGS | tee "$OUT/load_real.json"
log "vagus load, gpusim";      LD_LIBRARY_PATH=$SIMLIB timeout 60 "$BIN/vagus" load $FLAGS | tee "$OUT/load_gpusim.json"
log "client, real driver";     timeout 60 "$BIN/cudart_like" > "$OUT/client_real.txt" 2>&1; echo "rc $?"
log "client, gpusim";          LD_LIBRARY_PATH=$SIMLIB timeout 60 "$BIN/cudart_like" > "$OUT/client_gpusim.txt" 2>&1; echo "rc $?"
compare() { paste "$1" "$2" | awk -F'\t' '{ printf "%-45s | %s%s\n", $1, $2, ($1==$2 ? "" : "   <- differs") }'; }
compare "$OUT/client_real.txt" "$OUT/client_gpusim.txt"
if [ -x "$BIN/api_surface" ]; then
  log "API surface, real driver | gpusim"
  timeout 60 "$BIN/api_surface" > "$OUT/surface_real.txt" 2>&1; echo "rc $?"
  LD_LIBRARY_PATH=$SIMLIB timeout 60 "$BIN/api_surface" > "$OUT/surface_gpusim.txt" 2>&1; echo "rc $?"
  compare "$OUT/surface_real.txt" "$OUT/surface_gpusim.txt"
fi

if command -v nvidia-cuda-mps-control >/dev/null; then
  log "MPS: real control daemon"
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/vagus-mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/vagus-mps-log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  timeout 20 nvidia-cuda-mps-control -d; echo "daemon rc $?"
  echo get_default_active_thread_percentage | timeout 10 nvidia-cuda-mps-control
  for p in 100 50 25 10; do
    echo "-- CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$p"
    CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$p timeout 60 "$BIN/vagus" load --qps 20 --duration 2s --kernels 1 --grid 4224 --block 256 --work-cycles 200000 --json
  done
  echo get_server_list | timeout 10 nvidia-cuda-mps-control
  echo "set_default_active_thread_percentage 50" | timeout 10 nvidia-cuda-mps-control
  echo get_server_list | timeout 10 nvidia-cuda-mps-control > /tmp/servers
  for s in $(cat /tmp/servers); do echo "get_client_list $s" | timeout 10 nvidia-cuda-mps-control; echo "get_active_thread_percentage $s" | timeout 10 nvidia-cuda-mps-control; done
  echo "set_active_thread_percentage 999999 50" | timeout 10 nvidia-cuda-mps-control; echo "rc $?"
  echo quit | timeout 10 nvidia-cuda-mps-control
  sleep 1
  echo get_server_list | timeout 10 nvidia-cuda-mps-control; echo "after quit rc $?"
fi
log done
