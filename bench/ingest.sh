#!/usr/bin/env bash
# Brain ingest under load: N simulated agents (one process) against a real
# `vagus brain` process over QUIC + mutual TLS on loopback. One JSON line per
# configuration goes to bench/results/ingest-<date>.jsonl and to stdout.
#
#   bench/ingest.sh                 # the set recorded in bench/README.md
#   bench/ingest.sh 1000:10 500:20  # agents:hz pairs of your own
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p vagus -p vagus-bench
out="bench/results/ingest-$(date +%F).jsonl"
mkdir -p bench/results
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(100:10 1000:10 2000:10 3000:10 10000:1 10000:10)
for c in "${configs[@]}"; do
  agents=${c%%:*} hz=${c##*:}
  echo "== $agents agents at $hz Hz" >&2
  target/release/ingest --agents "$agents" --hz "$hz" --duration 20 --warmup 5 | tee -a "$out"
done
echo "results appended to $out" >&2
