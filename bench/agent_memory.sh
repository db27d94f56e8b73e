#!/usr/bin/env bash
# The node agent's resident memory while it follows 100 GPU processes (half
# of them shimmed; gpusim in null-launch mode, two devices since a simulated
# device holds 64 processes) for a while: RSS every 30 s,
# the number of processes it reports, and its peak (VmHWM).
#   bench/agent_memory.sh [seconds]     (default 600)
set -eu
cd "$(dirname "$0")/.."
SECS=${1:-600}
cargo build --release -q -p vagus -p vagus-shim
R=$PWD/target/release
LIB=$($R/vagus gpusim libdir)
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$TMP"' EXIT
export LD_LIBRARY_PATH=$LIB GPUSIM_NULL_LAUNCH=1 GPUSIM_STATE=$TMP/gpusim.state GPUSIM_DEVICES=2
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$R/vagus agent --node bench --segments "$TMP/seg" --metrics-addr 127.0.0.1:$PORT 2>"$TMP/agent.log" &
agent=$!
sleep 2
for i in $(seq 1 100); do
  if [ $((i % 2)) = 0 ]; then pre=$R/libvagus_shim.so; else pre=; fi
  LD_PRELOAD=$pre VAGUS_SHM_DIR=$TMP/seg $R/vagus load --json --device $((i % 2)) --qps 20 --kernels 4 --grid 1 --block 32 \
    --memory-mib 1 --duration $((SECS + 30))s > /dev/null 2>&1 &
done
start=$(date +%s)
while [ $(( $(date +%s) - start )) -lt "$SECS" ]; do
  sleep 30
  n=$(curl -s 127.0.0.1:$PORT/snapshot | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["processes"]))')
  echo "t=$(( $(date +%s) - start ))s rss=$(awk '/VmRSS/ {print $2}' /proc/$agent/status) KiB processes=$n"
done
echo "peak $(awk '/VmHWM/ {print $2}' /proc/$agent/status) KiB"
