#!/usr/bin/env bash
# The node agent's GPU check: uprobe cost on this kernel and on the real
# libcuda; the agent beside a PyTorch process (its NVML values against
# nvidia-smi, its processes and their sources); MPS control where
# nvidia-cuda-mps-control exists.
# Usage: bench/gpu_check_agent.sh BIN_DIR OUT_DIR   (BIN_DIR: release vagus and uprobe_cost)
set -u
BIN=$(cd "$1" && pwd); OUT=$2; mkdir -p "$OUT"
log() { echo "== $*"; }
log machine
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; uname -r; echo "uid $(id -u)"
ls /sys/kernel/btf/vmlinux 2>&1
LIBCUDA=$(ldconfig -p | awk '/libcuda\.so\.1 / {print $NF; exit}')
echo "libcuda: $LIBCUDA -> $(readlink -f "$LIBCUDA")"
nm -D "$(readlink -f "$LIBCUDA")" | grep -E " (cuCtxSynchronize|cuLibraryLoadData|cuModuleLoadData)" | head

log "uprobe cost: this binary's functions, and cuCtxSynchronize on the real libcuda"
timeout 180 "$BIN/uprobe_cost" --calls 100000 --rounds 3 --libcuda "$LIBCUDA" | tee "$OUT/uprobe_cost.json"

log "agent beside PyTorch"
MPS=""
if command -v nvidia-cuda-mps-control >/dev/null; then
  MPS="--mps-pipe-dirs /tmp/vagus-mps --mps-start --mps-control $(command -v nvidia-cuda-mps-control)"
fi
"$BIN/vagus" agent --node gpu --metrics-addr 127.0.0.1:9400 --segments /tmp/vagus-seg $MPS 2> "$OUT/agent.log" &
AGENT=$!
sleep 4
python3 - <<'PY' > "$OUT/torch.log" 2>&1 &
import time, torch
x = torch.randn(8192, 8192, device="cuda")
t = time.time()
n = 0
while time.time() - t < 20:
    y = x @ x
    torch.cuda.synchronize()
    n += 1
print("matmuls", n)
PY
TORCH=$!
sleep 10
curl -s 127.0.0.1:9400/snapshot > "$OUT/snapshot.json"
nvidia-smi --query-gpu=index,uuid,utilization.gpu,memory.used,power.draw,temperature.gpu,clocks.sm,clocks.mem --format=csv,noheader > "$OUT/smi.csv"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader > "$OUT/smi_apps.csv"
curl -s 127.0.0.1:9400/metrics > "$OUT/metrics.txt"
cat "$OUT/agent.log"
echo "torch pid $TORCH"
echo "-- nvidia-smi"; cat "$OUT/smi.csv" "$OUT/smi_apps.csv"
echo "-- agent"
python3 - "$OUT/snapshot.json" "$TORCH" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); torch = int(sys.argv[2])
print("probes", s["probes"], "nvml", s["nvml"], "notes", s["notes"])
for g in s["gpus"]:
    print("gpu", g["index"], g["uuid"], "util %", g["utilization_pct"], "mem MiB", (g["memory_used_bytes"] or 0) >> 20,
          "power W", (g["power_mw"] or 0) / 1000, "temp", g["temperature_c"], "processes", g["processes"])
for p in s["processes"]:
    mark = " (torch)" if p["pid"] == torch else ""
    print("process", p["pid"], p["comm"], mark, "sources", p["sources"], "memory MiB", p["memory_bytes"] >> 20,
          "sm %", p["sm_percent"], "ebpf", p["ebpf"])
print("mps", s.get("mps"))
PY
grep -c "^DCGM_FI_DEV" "$OUT/metrics.txt" | sed 's/^/DCGM samples: /'
command -v promtool >/dev/null && promtool check metrics < "$OUT/metrics.txt" && echo "promtool: ok"
wait $TORCH; cat "$OUT/torch.log"
kill $AGENT
if [ -n "$MPS" ]; then
  echo quit | CUDA_MPS_PIPE_DIRECTORY=/tmp/vagus-mps nvidia-cuda-mps-control
fi
log done
