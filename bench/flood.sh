#!/usr/bin/env bash
# The flood scenario: one client (127.0.0.10) floods as fast as it can
# while a legitimate one (127.0.0.11) sends a steady rate; levee limits each
# client address to RATE_LIMIT requests a second. Reports the legitimate
# client's errors and latency against its no-flood baseline, and how many
# flood requests reached the backend against what the limit allows.
# A measurement, not a test; the report goes to bench/out/flood-<date>.md.
#
#   bench/flood.sh                                  # builds levee (dist profile)
#   LEVEE_BIN=target/dist/levee SECONDS_EACH=10 bench/flood.sh
#
# Processes: the backend (nginx, as compare.sh runs it), levee (one worker),
# the flooder and the legitimate client, each its own process; all on
# 127.0.0.1, ended by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=flood
# shellcheck source=lib.sh source-path=SCRIPTDIR
source bench/lib.sh

SECONDS_EACH=${SECONDS_EACH:-10}
FLOOD_CONNS=${FLOOD_CONNS:-16}
LEGIT_RATE=${LEGIT_RATE:-50}
RATE_LIMIT=${RATE_LIMIT:-100}
BURST=${BURST:-20}
LEVEE_PORT=18580
ADMIN_PORT=18581
BACKEND_PORT=18582

command -v nginx >/dev/null || { log "nginx is needed for the backend (apt-get install nginx)"; exit 1; }
if [ -z "${LEVEE_BIN:-}" ]; then
  log "building levee (dist profile)"
  cargo build -q --profile dist -p levee --locked
  LEVEE_BIN=target/dist/levee
fi

# On exit, every PID in PIDS is stopped and TMP removed (lib.sh).
TMP=$(mktemp -d)
trap_cleanup

mkdir -p "$TMP/backend-tmp"
sed -e "s#@TMP@#$TMP#g" -e "s#@BACKEND_PORT@#$BACKEND_PORT#g" bench/conf/backend-nginx.conf.tmpl > "$TMP/backend.conf"
nginx -c "$TMP/backend.conf" -p "$TMP" >/dev/null 2>&1 &
PIDS+=("$!")

cat > "$TMP/levee.toml" <<EOF
[runtime]
workers = 1

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[listener.main]
address = "127.0.0.1:$LEVEE_PORT"

[[route]]
name = "all"
upstream = "backend"
rate_limits = ["per_client"]

[upstream.backend.region.local]
endpoints = ["127.0.0.1:$BACKEND_PORT"]

[rate_limit.per_client]
rate = $RATE_LIMIT
per = "1s"
burst = $BURST
EOF
LEVEE_LOG=warn "$LEVEE_BIN" run --no-watch -c "$TMP/levee.toml" &
PIDS+=("$!")
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" 10 || true
wait_http "http://127.0.0.1:$LEVEE_PORT/" 10 || true
# The readiness probe used a request of its own from 127.0.0.1; the
# clients below use their own addresses.

backend_requests() {
  curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" \
    | awk '/^levee_rate_limit_decisions_total\{rule="per_client",decision="allowed"\}/ { print $2 }'
}

log "baseline: the legitimate client alone for ${SECONDS_EACH}s"
baseline=$(python3 bench/flood.py legit 127.0.0.1 "$LEVEE_PORT" "$SECONDS_EACH" "$LEGIT_RATE")

log "flood: $FLOOD_CONNS connections from 127.0.0.10, legitimate client alongside, ${SECONDS_EACH}s"
allowed_before=$(backend_requests)
python3 bench/flood.py flood 127.0.0.1 "$LEVEE_PORT" "$SECONDS_EACH" "$FLOOD_CONNS" > "$TMP/flood.json" &
flooder=$!
PIDS+=("$flooder")
during=$(python3 bench/flood.py legit 127.0.0.1 "$LEVEE_PORT" "$SECONDS_EACH" "$LEGIT_RATE")
wait "$flooder" || true
allowed_after=$(backend_requests)
flood=$(cat "$TMP/flood.json")

report=$(python3 - "$baseline" "$during" "$flood" "$allowed_before" "$allowed_after" "$SECONDS_EACH" "$LEGIT_RATE" "$RATE_LIMIT" "$BURST" <<'EOF'
import json, sys
base, during, flood = (json.loads(a) for a in sys.argv[1:4])
before, after, secs, legit_rate, limit, burst = (float(a) for a in sys.argv[4:10])
flood_ok = flood["statuses"].get("200", 0)
allowed = burst + limit * secs
legit_errors = sum(n for s, n in during["statuses"].items() if s != "200")
print(f"| phase | legitimate requests | errors | p50 ms | p99 ms | max ms |")
print(f"|---|---:|---:|---:|---:|---:|")
for name, r in (("alone (baseline)", base), ("during the flood", during)):
    errs = sum(n for s, n in r["statuses"].items() if s != "200")
    print(f"| {name} | {r['n']} | {errs} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |")
print()
print(f"- flood: {flood['per_second']} requests/s from 127.0.0.10, statuses {flood['statuses']}")
print(f"- flood requests admitted (reached the backend): {flood_ok}; the limit allows at most {allowed:.0f} ({burst:.0f} + {limit:.0f}/s x {secs:.0f} s)")
print(f"- legitimate p99 during the flood: {during['p99_ms'] / base['p99_ms']:.2f}x its baseline; errors: {legit_errors}")
EOF
)
date=$(date -u +%Y%m%d-%H%M%S)
mkdir -p bench/out
{
  echo "## flood scenario, $(date -u '+%Y-%m-%d %H:%M:%S') UTC"
  echo
  echo "- levee rev $(git rev-parse --short HEAD), $LEVEE_BIN, one worker; rate limit $RATE_LIMIT/s burst $BURST per client address"
  echo "- flooder: $FLOOD_CONNS keep-alive connections from 127.0.0.10, closed loop; legitimate: $LEGIT_RATE req/s from 127.0.0.11; ${SECONDS_EACH}s each phase"
  echo
  echo "$report"
} | tee "bench/out/flood-$date.md"
