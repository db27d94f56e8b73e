#!/usr/bin/env bash
# The node agent's own cost: CPU while 4 shimmed processes launch 100 000
# kernels a second between them (gpusim in null-launch mode, so launches
# return at once), with the eBPF probes (as root) and without; and its
# resident memory. Prints one line per configuration.
#   bench/agent_cpu.sh [seconds]     (default 20)
set -eu
cd "$(dirname "$0")/.."
SECS=${1:-20}
cargo build --release -q -p vagus -p vagus-shim
R=$PWD/target/release
LIB=$($R/vagus gpusim libdir)
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$TMP"' EXIT
export LD_LIBRARY_PATH=$LIB GPUSIM_NULL_LAUNCH=1 GPUSIM_STATE=$TMP/gpusim.state
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
tck=$(getconf CLK_TCK)
for mode in probes no-bpf; do
  mkdir -p "$TMP/seg-$mode"
  flag=""; [ "$mode" = no-bpf ] && flag=--no-bpf
  $R/vagus agent --node bench --segments "$TMP/seg-$mode" $flag 2>"$TMP/agent-$mode.log" &
  agent=$!
  sleep 2
  for i in 1 2 3 4; do
    LD_PRELOAD=$R/libvagus_shim.so VAGUS_SHM_DIR=$TMP/seg-$mode \
      $R/vagus load --json --qps 2500 --kernels 10 --grid 1 --block 32 \
      --duration $((SECS + 6))s > "$TMP/load-$mode-$i.json" &
  done
  sleep 3
  c0=$(cpu $agent); t0=$(date +%s.%N)
  sleep "$SECS"
  c1=$(cpu $agent); t1=$(date +%s.%N)
  r=$(rss $agent); h=$(hwm $agent)
  wait $(jobs -p | grep -v "^$agent\$") 2>/dev/null || true
  launches=$(cat "$TMP"/load-$mode-*.json | python3 -c '
import json, sys
d = [json.loads(l) for l in sys.stdin if l.strip()]
print(round(sum(x["kernels"] / x["duration_s"] for x in d)))')
  kill $agent; wait $agent 2>/dev/null || true
  awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v tck="$tck" -v r="$r" -v h="$h" -v m="$mode" -v l="$launches" \
    'BEGIN { printf "%s: agent CPU %.2f%% of one core over %.0f s; RSS %d KiB (peak %d KiB); loads: %s launches/s\n", m, (c1 - c0) / tck / (t1 - t0) * 100, t1 - t0, r, h, l }'
  head -3 "$TMP/agent-$mode.log"
done
