#!/usr/bin/env bash
# The gateway against nginx (Debian's) configured as the same proxy, side by
# side in one run: a fast upstream (an nginx of its own, one worker,
# answering `200 ok` itself: the same upstream for both proxies, and no
# proxy shares its processes), nginx (two workers, as the gateway has two
# threads on two cores) proxying to it over kept-alive upstream
# connections, and `vagus gateway`
# routing to it (a static route table, one model). Closed loop, each proxy
# in turn: requests/s and their ratio. Open loop at RATE req/s: latency
# p50/p99 direct to the upstream and through each proxy, and what each
# proxy adds. Prints JSON lines; the last is the summary.
#   bench/gateway_vs_nginx.sh [seconds] [rate] [connections]   (10, 5000, 32)
set -eu
cd "$(dirname "$0")/.."
SECS=${1:-10}
RATE=${2:-5000}
CONNS=${3:-32}
command -v nginx >/dev/null || apt-get install -y nginx-light >/dev/null
cargo build --release -q -p vagus -p vagus-bench
R=$PWD/target/release
TMP=$(mktemp -d)
mkdir -p "$TMP/up"
trap 'kill $(jobs -p) 2>/dev/null; for f in "$TMP/nginx.pid" "$TMP/up/nginx.pid"; do [ -f "$f" ] && kill $(cat "$f") 2>/dev/null; done; rm -rf "$TMP"' EXIT
UP=18801; NGX=18802; GW=18803
cat > "$TMP/up/nginx.conf" <<CONF
worker_processes 1;
pid $TMP/up/nginx.pid;
error_log $TMP/up/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$UP; keepalive_requests 1000000; location / { return 200 "ok\n"; } }
}
CONF
cat > "$TMP/nginx.conf" <<CONF
worker_processes 2;
pid $TMP/nginx.pid;
error_log $TMP/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:$UP; keepalive 256; }
  server {
    listen 127.0.0.1:$NGX;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
CONF
nginx -c "$TMP/up/nginx.conf" -p "$TMP/up"
nginx -c "$TMP/nginx.conf" -p "$TMP"
echo '{"models": {"m": [{"placement": "up", "node": "local", "url": "http://127.0.0.1:'$UP'", "state": "running", "weight": 100}]}}' > "$TMP/routes.json"
$R/vagus gateway --listen 127.0.0.1:$GW --routes "$TMP/routes.json" >/dev/null 2>"$TMP/gateway.log" &
for p in $UP $NGX $GW; do
  until curl -sf "http://127.0.0.1:$p/" >/dev/null; do sleep 0.1; done
done
L=$R/http_load
closed() { $L "http://127.0.0.1:$1/" --seconds "$SECS" --connections "$CONNS"; }
open() { $L "http://127.0.0.1:$1/" --seconds "$SECS" --rate "$RATE"; }
n1=$(closed $NGX); g1=$(closed $GW); n2=$(closed $NGX); g2=$(closed $GW)
d=$(open $UP); no=$(open $NGX); go=$(open $GW)
for l in "$n1" "$g1" "$n2" "$g2" "$d" "$no" "$go"; do echo "$l"; done
python3 - "$n1" "$g1" "$n2" "$g2" "$d" "$no" "$go" <<'PY'
import json, sys
n1, g1, n2, g2, d, no, go = (json.loads(a) for a in sys.argv[1:])
nginx = (n1["rps"] + n2["rps"]) / 2
gw = (g1["rps"] + g2["rps"]) / 2
print(json.dumps({
    "summary": "gateway_vs_nginx",
    "nginx_rps": round(nginx), "gateway_rps": round(gw), "ratio": round(gw / nginx, 3),
    "open_rate": d["rate"],
    "direct_p50_us": d["p50_us"], "direct_p99_us": d["p99_us"],
    "nginx_p50_us": no["p50_us"], "nginx_p99_us": no["p99_us"],
    "gateway_p50_us": go["p50_us"], "gateway_p99_us": go["p99_us"],
    "gateway_added_p50_us": go["p50_us"] - d["p50_us"], "gateway_added_p99_us": go["p99_us"] - d["p99_us"],
    "nginx_added_p50_us": no["p50_us"] - d["p50_us"], "nginx_added_p99_us": no["p99_us"] - d["p99_us"],
    "failed": sum(x["failed"] for x in (n1, g1, n2, g2, d, no, go)),
}))
PY
