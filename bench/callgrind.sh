#!/usr/bin/env bash
# bench/callgrind.sh: user-space instructions per proxied request, counted by
# valgrind's callgrind. Unlike time, the count is repeatable whatever else
# the machine is doing, so it compares two builds on a noisy machine, where
# bench/compare.sh's req/s cannot.
#
# levee (the dist build, one worker, pinned to CPU 0) runs under callgrind
# in front of the nginx backend of compare.sh; wrk (CPU 1) sends keep-alive
# GETs for DURATION; levee is stopped, and the program's total instruction
# count is divided by the requests served. The total includes start-up,
# shutdown and the background tasks (health, history, alert evaluation),
# which over DURATION come to a few dozen instructions per request.
#
# Environment:
#   LEVEE_BIN=path        measure this binary, skip `cargo build --profile dist`
#   DURATION=12s          wrk duration
#   CONNS=16              wrk connections
#   LEVEE_READY_TIMEOUT=60  seconds for levee to start under valgrind
#   CARGO=cargo
#
# Output: the figures on stdout, progress on stderr; the report is also
# written to bench/out/callgrind-<timestamp>.md, and callgrind's counts to
# bench/out/callgrind-<timestamp>.callgrind.out (for callgrind_annotate).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
CONF_DIR="$BENCH_DIR/conf"
OUT_DIR="$BENCH_DIR/out"
BENCH_NAME=callgrind
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$BENCH_DIR/lib.sh"

LEVEE_BIN="${LEVEE_BIN:-}"
DURATION="${DURATION:-12s}"
CONNS="${CONNS:-16}"
LEVEE_READY_TIMEOUT="${LEVEE_READY_TIMEOUT:-60}"
CARGO="${CARGO:-cargo}"

PROXY_CPU=0 # levee
LOAD_CPU=1  # backend + wrk
# Not compare.sh's or idle-memory.sh's ports.
BACKEND_PORT=18200
LEVEE_PORT=18280
LEVEE_ADMIN_PORT=18992

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
[[ "$CONNS" =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer"

skip() { die "$1: $2"; }

trap_cleanup
take_lock "another benchmark is running (bench lock held)"

pkgs=()
command -v valgrind >/dev/null || pkgs+=(valgrind)
command -v wrk >/dev/null || pkgs+=(wrk)
command -v nginx >/dev/null || pkgs+=(nginx)
command -v curl >/dev/null || pkgs+=(curl)
command -v taskset >/dev/null || pkgs+=(util-linux)
install_pkgs "${pkgs[@]}"

mkdir -p "$OUT_DIR"
OUT_PREFIX="$OUT_DIR/callgrind-$(date +%Y%m%d-%H%M%S)"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/levee-callgrind.XXXXXX")

prepare_levee
start_backend
for port in "$LEVEE_PORT" "$LEVEE_ADMIN_PORT"; do
  port_in_use "$port" && die "port $port is already in use"
done

render "$CONF_DIR/levee.toml.tmpl" "$TMP/levee.toml" \
  PORT="$LEVEE_PORT" ADMIN_PORT="$LEVEE_ADMIN_PORT" BACKEND_PORT="$BACKEND_PORT"
start_bg "$PROXY_CPU" "$TMP/levee.log" env RUST_LOG=warn \
  valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.out" \
  "$LEVEE_BIN_RESOLVED" run --no-watch -c "$TMP/levee.toml"
LEVEE_PID=$LAST_PID
rc=0
wait_http "http://127.0.0.1:$LEVEE_ADMIN_PORT/readyz" "$LEVEE_READY_TIMEOUT" "$LEVEE_PID" || rc=$?
if ((rc != 0)); then
  tail_log "$TMP/levee.log"
  die "levee did not come up under valgrind"
fi
log "levee up under callgrind (pid $LEVEE_PID); wrk -c$CONNS -d$DURATION"

requests=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$LEVEE_PORT/" |
  awk '/requests in/ {print $1}')
[[ "$requests" =~ ^[1-9][0-9]*$ ]] || die "wrk reported no requests"

# SIGINT drains and exits; callgrind writes its counts as the program ends.
kill -INT "$LEVEE_PID"
for ((i = 0; i < 600; i++)); do
  is_alive "$LEVEE_PID" || break
  sleep 0.1
done
wait "$LEVEE_PID" 2>/dev/null || true
[[ -s "$TMP/callgrind.out" ]] || die "callgrind wrote no counts (see $TMP/levee.log)"
total=$(callgrind_annotate "$TMP/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
[[ "$total" =~ ^[0-9]+$ ]] || die "no program total in the callgrind output"
per_request=$((total / requests))
cp "$TMP/callgrind.out" "$OUT_PREFIX.callgrind.out"

{
  echo "# bench/callgrind.sh"
  echo
  echo "- levee: $(levee_rev) ($LEVEE_BIN_RESOLVED)"
  echo "- CPU: $(cpu_model); wrk -t1 -c$CONNS -d$DURATION"
  echo
  echo "| requests | instructions | per request |"
  echo "|---:|---:|---:|"
  echo "| $requests | $total | $per_request |"
  echo
  echo "Counts by function: callgrind_annotate $OUT_PREFIX.callgrind.out"
} | tee "$OUT_PREFIX.md"
