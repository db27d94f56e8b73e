#!/usr/bin/env bash
# The agent's cost of reading inference servers' metrics: 16 `vagus serve`
# endpoints (gpusim) scraped at 10 Hz, against the same agent scraping
# none, side by side in one run; the agent's CPU (utime + stime) over the
# interval, as a share of one core. Run with FINE=1 for pages with
# `--fine-buckets` (4%-apart buckets, ~10x longer), and LOAD=QPS to keep
# every server serving QPS requests/s meanwhile (its histograms, counters
# and gauges then change between scrapes, as a serving page's do).
#   bench/serving_scrape.sh [seconds] [endpoints]     (default 30, 16)
# PERF_OUT=FILE records the scraping agent with perf meanwhile.
set -eu
cd "$(dirname "$0")/.."
SECS=${1:-30}
N=${2:-16}
cargo build --release -q -p vagus -p gpusim-cuda -p gpusim-nvml
R=$PWD/target/release
LIB=$($R/vagus gpusim libdir)
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$TMP"' EXIT
export LD_LIBRARY_PATH=$LIB GPUSIM_STATE=$TMP/gpusim.state
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)
fine=""; [ "${FINE:-0}" = 1 ] && fine=--fine-buckets
ports=()
for i in $(seq 1 "$N"); do
  port=$((18600 + i))
  $R/vagus serve --listen 127.0.0.1:$port --model m --model-gb 1 $fine >/dev/null 2>&1 &
  ports+=("$port")
done
for p in "${ports[@]}"; do
  until curl -sf "http://127.0.0.1:$p/health" >/dev/null; do sleep 0.2; done
  # A few requests, so the histograms hold something.
  for k in 1 2 3; do
    curl -s "http://127.0.0.1:$p/v1/completions" -H 'content-type: application/json' \
      -d '{"model":"m","prompt":"hello there","max_tokens":8}' >/dev/null
  done
done
page=$(curl -s "http://127.0.0.1:${ports[0]}/metrics" | wc -c)
if [ -n "${LOAD:-}" ]; then
  for p in "${ports[@]}"; do
    $R/vagus bench serve --url "http://127.0.0.1:$p" --model m --qps "$LOAD" --prompt-tokens 64 \
      --output-tokens 16 --duration $((SECS + 10))s --seed "$p" >/dev/null 2>&1 &
  done
fi
serving=$(IFS=,; echo "${ports[*]}")
mkdir -p "$TMP/seg-a" "$TMP/seg-b"
$R/vagus agent --node scrape --no-bpf --segments "$TMP/seg-a" --serving "$serving" \
  --metrics-addr 127.0.0.1:18690 2>"$TMP/agent-a.log" &
a=$!
$R/vagus agent --node idle --no-bpf --segments "$TMP/seg-b" 2>"$TMP/agent-b.log" &
b=$!
sleep 3
ca0=$(cpu $a); cb0=$(cpu $b); t0=$(date +%s.%N)
if [ -n "${PERF_OUT:-}" ]; then
  perf record -F 999 ${PERF_ARGS:--g} -o "$PERF_OUT" -p $a -- sleep "$SECS" 2>/dev/null
else
  sleep "$SECS"
fi
ca1=$(cpu $a); cb1=$(cpu $b); t1=$(date +%s.%N)
scrapes=$(curl -s http://127.0.0.1:18690/snapshot | python3 -c '
import json, sys
s = json.load(sys.stdin)["serving"]
print(sum(1 for e in s if e["server"] == "vllm"), min(e["windows"] for e in s))')
awk -v a0="$ca0" -v a1="$ca1" -v b0="$cb0" -v b1="$cb1" -v t0="$t0" -v t1="$t1" -v tck="$tck" \
    -v n="$N" -v page="$page" -v s="$scrapes" -v fine="${FINE:-0}" -v load="${LOAD:-0}" \
  'BEGIN { da = (a1 - a0) / tck / (t1 - t0) * 100; db = (b1 - b0) / tck / (t1 - t0) * 100;
           printf "{\"endpoints\": %d, \"load_qps_each\": %s, \"fine_buckets\": %s, \"page_bytes\": %d, \"seconds\": %.1f, \"agent_scraping_cpu_pct\": %.2f, \"agent_idle_cpu_pct\": %.2f, \"scraping_cost_pct\": %.2f, \"endpoints_read_and_min_windows\": \"%s\"}\n",
             n, load, fine ? "true" : "false", page, t1 - t0, da, db, da - db, s }'
