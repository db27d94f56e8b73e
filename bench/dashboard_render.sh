#!/usr/bin/env bash
# The dashboard's drawing cost at 100 workloads: a brain (BIN_DIR/vagus) with
# 25 nodes of four H100s and 100 quarter-GPU workloads, then
# bench/dashboard_render.mjs in Chromium. Usage: bench/dashboard_render.sh BIN_DIR
set -euo pipefail
BIN=$(cd "$1" && pwd); HERE=$(cd "$(dirname "$0")" && pwd)
DIR=$(mktemp -d); trap 'kill $BRAIN 2>/dev/null; rm -rf "$DIR"' EXIT
TOKEN=dashboard-render-token-0001
printf '[[token]]\nname = "bench"\nrole = "admin"\ntoken = "%s"\n' "$TOKEN" > "$DIR/tokens.toml"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN/vagus" brain --http "127.0.0.1:$PORT" --tokens "$DIR/tokens.toml" --stats-every 0 > "$DIR/brain.log" 2>&1 & BRAIN=$!
URL="http://127.0.0.1:$PORT"
for _ in $(seq 50); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.1; done
api() { curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' "$URL$1" -d "$2" >/dev/null; }
for n in $(seq -w 0 24); do
  api /v1/nodes "{\"name\":\"node-$n\",\"cpu_milli\":64000,\"memory_mib\":512000,\"gpus\":[{\"model\":\"NVIDIA H100 80GB HBM3\"},{\"model\":\"NVIDIA H100 80GB HBM3\"},{\"model\":\"NVIDIA H100 80GB HBM3\"},{\"model\":\"NVIDIA H100 80GB HBM3\"}]}"
done
for i in $(seq -w 0 99); do
  api /v1/placements "{\"name\":\"w-$i\",\"model_id\":\"w-$i\",\"model_size_gb\":2,\"batch\":4,\"seq_len\":1024,\"priority\":\"P1\",\"sla_ms\":50,\"tenant\":\"t\",\"expected_duration_s\":600,\"share_pct\":25,\"cpu_milli\":100,\"memory_mib\":256}"
done
node "$HERE/dashboard_render.mjs" "$URL" "$TOKEN" 50
