#!/usr/bin/env bash
# Slow-client scenarios with slowhttptest (Debian package `slowhttptest`):
# slowloris (-H), slow POST (-B) and slow read (-X) against levee, while a
# probe sends one ordinary request every 250 ms and records whether it was
# served and how long it took. A measurement, not a test: it prints a table
# and writes it to bench/out/slowhttp-<date>.md.
#
#   bench/slowhttp.sh                           # builds levee (dev profile), 3 modes x 20 s
#   DURATION=75 bench/slowhttp.sh               # long enough for slow reads to hit body_timeout (60 s)
#   LEVEE_BIN=target/dist/levee DURATION=30 CONNECTIONS=1000 bench/slowhttp.sh
#
# Everything listens on 127.0.0.1 only; every process started here is ended
# by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=slowhttp
# shellcheck source=lib.sh source-path=SCRIPTDIR
source bench/lib.sh

DURATION=${DURATION:-20}
CONNECTIONS=${CONNECTIONS:-1000}
RATE=${RATE:-200}
LEVEE_PORT=${LEVEE_PORT:-18480}
ADMIN_PORT=${ADMIN_PORT:-18481}
BACKEND_PORT=${BACKEND_PORT:-18482}

if ! command -v slowhttptest >/dev/null; then
  log "installing slowhttptest"
  if [ "$(id -u)" -eq 0 ]; then apt-get install -y -qq slowhttptest >/dev/null
  else sudo apt-get install -y -qq slowhttptest >/dev/null; fi
fi

if [ -z "${LEVEE_BIN:-}" ]; then
  log "building levee"
  cargo build -q -p levee --locked
  LEVEE_BIN=target/debug/levee
fi

# On exit, every PID in PIDS is stopped and TMP removed (lib.sh).
TMP=$(mktemp -d)
trap_cleanup

# The backend: Python's static file server, with a 1 MiB file for slow reads.
mkdir -p "$TMP/www"
echo "hello from backend" > "$TMP/www/index.html"
head -c 1048576 /dev/zero > "$TMP/www/big.bin"
python3 -m http.server "$BACKEND_PORT" --bind 127.0.0.1 --directory "$TMP/www" >/dev/null 2>&1 &
PIDS+=("$!")
wait_http "http://127.0.0.1:$BACKEND_PORT/" 10 || true

# levee with its defaults for slow clients (header_timeout 10 s,
# body_min_rate 500 B/s, body_timeout 60 s) and connection caps raised so
# that one attacking address is not simply capped at 256 connections: the
# scenario is about the slow-client guards themselves.
cat > "$TMP/levee.toml" <<EOF
[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[server]
max_connections = 20000
max_connections_per_ip = 20000

[listener.main]
address = "127.0.0.1:$LEVEE_PORT"

[[route]]
name = "all"
upstream = "app"

[upstream.app.region.local]
endpoints = ["127.0.0.1:$BACKEND_PORT"]
EOF
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
LEVEE_LOG=warn "$LEVEE_BIN" run -c "$TMP/levee.toml" --no-watch &
PIDS+=("$!")

wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" 10 || true
curl -fsS -o /dev/null "http://127.0.0.1:$LEVEE_PORT/" || { log "levee does not answer"; exit 1; }

metric() {
  curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v s="$1" 'index($0, s) == 1 { print $2 }' | head -1
}

# One ordinary request every 250 ms for the scenario's length; prints
# "served/total p50 p99 max" (seconds).
probe() {
  local n=$(( DURATION * 4 )) out="$TMP/probe.txt"
  : > "$out"
  for _ in $(seq 1 "$n"); do
    curl -s -o /dev/null -m 5 -w '%{http_code} %{time_total}\n' "http://127.0.0.1:$LEVEE_PORT/" >> "$out" || echo "000 5" >> "$out"
    sleep 0.25
  done
  local served total
  served=$(awk '$1 == 200' "$out" | wc -l)
  total=$(wc -l < "$out")
  awk '{ print $2 }' "$out" | sort -n | awk -v ok="$served" -v n="$total" '
    { t[NR] = $1 }
    END {
      i99 = int(NR * 0.99); if (i99 < NR * 0.99) i99++; if (i99 < 1) i99 = 1
      printf "%d/%d %.4f %.4f %.4f\n", ok, n, t[int((NR + 1) / 2)], t[i99], t[NR]
    }'
}

declare -A args=(
  [slowloris]="-H -i 5 -x 24"
  [slow_post]="-B -i 5 -s 65536 -x 10"
  [slow_read]="-X -k 4 -n 2 -w 8 -y 64 -z 16 -u http://127.0.0.1:$LEVEE_PORT/big.bin"
)
declare -A phase=([slowloris]=head [slow_post]=body [slow_read]=send)

date=$(date -u +%Y%m%d-%H%M%S)
report="bench/out/slowhttp-$date.md"
mkdir -p bench/out
{
  echo "## slowhttptest against levee, $(date -u '+%Y-%m-%d %H:%M:%S') UTC"
  echo
  echo "- levee: rev $(git rev-parse --short HEAD), binary $LEVEE_BIN, defaults for slow clients"
  echo "- slowhttptest $(slowhttptest -h 2>&1 | awk '/version/ { print $NF; exit }'): $CONNECTIONS connections at $RATE/s for $DURATION s per mode"
  echo "- probe: one GET every 250 ms alongside"
  echo
  echo "| mode | probe served | probe p50 s | probe p99 s | probe max s | levee dropped as slow | slowhttptest says |"
  echo "|---|---:|---:|---:|---:|---:|---|"
} > "$report"

for mode in slowloris slow_post slow_read; do
  log "$mode: $CONNECTIONS connections for $DURATION s"
  before=$(metric "levee_listener_slow_clients_total{listener=\"main\",phase=\"${phase[$mode]}\"}")
  url="http://127.0.0.1:$LEVEE_PORT/"
  # shellcheck disable=SC2086
  slowhttptest ${args[$mode]} -c "$CONNECTIONS" -r "$RATE" -l "$DURATION" -p 3 -u "$url" \
    > "$TMP/$mode.log" 2>&1 &
  attack=$!
  PIDS+=("$attack")
  read -r served p50 p99 max < <(probe)
  wait "$attack" || true
  after=$(metric "levee_listener_slow_clients_total{listener=\"main\",phase=\"${phase[$mode]}\"}")
  # Its log is coloured: strip the escapes, then read the last verdict.
  verdict=$(sed 's/\x1b\[[0-9;]*m//g' "$TMP/$mode.log" | awk '/service available:/ { v = $NF } END { print v }')
  dropped=$(( ${after%.*} - ${before%.*} ))
  echo "| $mode | $served | $p50 | $p99 | $max | $dropped (${phase[$mode]}) | service available: ${verdict:-?} |" >> "$report"
done

cat "$report"
log "report written to $report"
