#!/usr/bin/env bash
# The shim's launch-path benchmarks on gpusim in null-launch mode (launch
# returns at once). Build first: cargo build --release --workspace
#  1. per-launch added cost, median and p99, 1 and 2 threads (target/release/launch_overhead)
#  2. whole-process ratio, shimmed / unshimmed, of a 10^6-launch loop (5 alternating runs each)
#  3. resident memory with and without the shim over 10^7 launches
#  4. system calls of the launching thread over 10^5 and 10^6 launches (strace -c, if installed)
set -eu
cd "$(dirname "$0")/.."
R=target/release
LIB=$($R/vagus gpusim libdir)
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/seg"
cc -O2 -o "$TMP/launch_loop" bench/clients/launch_loop.c -L"$LIB" -lcuda
export LD_LIBRARY_PATH=$LIB GPUSIM_NULL_LAUNCH=1 GPUSIM_STATE=$TMP/gpusim.state VAGUS_SHM_DIR=$TMP/seg
SHIM=$PWD/$R/libvagus_shim.so
echo "== 1. added cost per launch"
$R/launch_overhead
echo "== 2. 10^6-launch loop, ns per launch (plain | shim)"
for i in 1 2 3 4 5; do
  p=$("$TMP/launch_loop" 1000000 | awk '{print $4}')
  s=$(LD_PRELOAD=$SHIM "$TMP/launch_loop" 1000000 | awk '{print $4}')
  echo "$p $s" | tee -a "$TMP/loop.txt"
done
P=$(awk '{print $1}' "$TMP/loop.txt" | sort -g | sed -n 3p)
S=$(awk '{print $2}' "$TMP/loop.txt" | sort -g | sed -n 3p)
awk -v p="$P" -v s="$S" 'BEGIN { printf "median plain %.2f ns, shim %.2f ns: whole-process ratio %.3f\n", p, s, s / p }'
echo "== 3. resident memory over 10^7 launches (KiB)"
echo "plain: $("$TMP/launch_loop" 10000000)"
echo "shim:  $(LD_PRELOAD=$SHIM "$TMP/launch_loop" 10000000)"
echo "== 4. system calls of the launching thread"
if command -v strace >/dev/null; then
  for n in 100000 1000000; do
    echo "-- $n launches, shim:"
    LD_PRELOAD=$SHIM strace -c -o "$TMP/strace.txt" "$TMP/launch_loop" $n >/dev/null
    tail -1 "$TMP/strace.txt"
  done
else
  echo "strace is not installed (apt-get install strace)"
fi
