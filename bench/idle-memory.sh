#!/usr/bin/env bash
# bench/idle-memory.sh: memory per idle keep-alive connection, for levee,
# nginx and HAProxy, each measured the same way: the PSS delta over N idle
# connections (results in docs/benchmarks.md).
#
# For each candidate in turn: start it (one worker, pinned to CPU 0), check
# one request, warm it up with a few connections, read its PSS; open N
# connections from bench/idle-client.py (pinned to CPU 1 with the backend),
# each after one complete request/response, and leave them idle; check that
# all N are ESTABLISHED; read its PSS again; close them, read it once more;
# stop the candidate. Result: (PSS with N − PSS before) / N.
#
# Environment:
#   N=10000                 idle connections per candidate
#   CANDIDATES="levee nginx haproxy"   subset / order to run
#   SETTLE=3                seconds to wait before each memory reading
#   CONCURRENCY=256         connections the client opens at once
#   WARMUP_CONNS=100        connections opened and closed before the baseline (0: none)
#   OPEN_TIMEOUT=120        seconds allowed to open the N connections
#   KEEPALIVE_S=300         client keep-alive timeout given to every candidate; must
#                           exceed OPEN_TIMEOUT + 2*SETTLE + 30 (the measurement)
#   LEVEE_BIN=path          use this levee binary, skip `cargo build`
#   LEVEE_READY_TIMEOUT=20  seconds to wait for levee's /readyz
#   CARGO=cargo             cargo executable used for the build
#
# Output: facts + markdown table on stdout, progress on stderr; the report is
# also written to bench/out/idle-memory-<timestamp>.md.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
CONF_DIR="$BENCH_DIR/conf"
OUT_DIR="$BENCH_DIR/out"
CLIENT="$BENCH_DIR/idle-client.py"
BENCH_NAME=idle-memory
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$BENCH_DIR/lib.sh"

N="${N:-10000}"
CANDIDATES="${CANDIDATES:-levee nginx haproxy}"
SETTLE="${SETTLE:-3}"
CONCURRENCY="${CONCURRENCY:-256}"
WARMUP_CONNS="${WARMUP_CONNS:-100}"
OPEN_TIMEOUT="${OPEN_TIMEOUT:-120}"
KEEPALIVE_S="${KEEPALIVE_S:-300}"
LEVEE_BIN="${LEVEE_BIN:-}"
LEVEE_READY_TIMEOUT="${LEVEE_READY_TIMEOUT:-20}"
CARGO="${CARGO:-cargo}"

PROXY_CPU=0   # candidate
LOAD_CPU=1    # backend + client

# Not compare.sh's ports, so a leftover of one does not block the other.
BACKEND_PORT=18100
LEVEE_PORT=18180
NGINX_PORT=18181
HAPROXY_PORT=18182
LEVEE_ADMIN_PORT=18991

SRC_COUNT=200 # client source addresses 127.0.0.2 .. 127.0.0.201
EXPECTED_BODY="hello from backend"

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# ---------------------------------------------------------------- arguments
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_pos() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
is_pos "$N" || die "N must be a positive integer (got '$N')"
is_pos "$SETTLE" || die "SETTLE must be a positive integer (seconds)"
is_pos "$CONCURRENCY" || die "CONCURRENCY must be a positive integer"
is_uint "$WARMUP_CONNS" || die "WARMUP_CONNS must be a non-negative integer"
is_pos "$OPEN_TIMEOUT" || die "OPEN_TIMEOUT must be a positive integer (seconds)"
is_pos "$KEEPALIVE_S" || die "KEEPALIVE_S must be a positive integer (seconds)"
is_pos "$LEVEE_READY_TIMEOUT" || die "LEVEE_READY_TIMEOUT must be a positive integer"
parse_candidates levee nginx haproxy
# The connections must all still be open when memory is read: opening them,
# settling and the checks must fit in the keep-alive timeout, with margin.
((OPEN_TIMEOUT + 2 * SETTLE + 30 < KEEPALIVE_S)) ||
  die "KEEPALIVE_S ($KEEPALIVE_S) must exceed OPEN_TIMEOUT + 2*SETTLE + 30 s, or idle connections may time out before the reading"

declare -A PORT_OF=([levee]=$LEVEE_PORT [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT)

# ---------------------------------------------------------------- file descriptors
# Every connection is one descriptor in the client and one in the candidate
# (plus its upstream connections). Raise the soft limit to the hard one;
# candidates inherit it.
NOFILE_HARD=$(ulimit -Hn)
if [[ "$NOFILE_HARD" != unlimited ]]; then
  ulimit -Sn "$NOFILE_HARD"
else
  ulimit -Sn 1048576 2>/dev/null || true
fi
NOFILE=$(ulimit -Sn)
[[ "$NOFILE" == unlimited ]] && NOFILE=1048576
# Connection cap given to the candidates: N plus room for upstream
# connections (the client opens CONCURRENCY at once) and the checks.
MAX_CONNS=$((N + CONCURRENCY + 1024))
((NOFILE >= MAX_CONNS + 64)) ||
  die "need $((MAX_CONNS + 64)) file descriptors per process for N=$N, but the limit is $NOFILE (ulimit -Hn); lower N or raise the hard limit"

# ---------------------------------------------------------------- processes
CLIENT_PID=""
CLIENT_TO=""
CLIENT_FROM=""

# On exit, Ctrl-C and TERM included: the client's FIFOs are closed, every
# process started here is stopped by PID and TMP is removed (lib.sh).
on_cleanup() { close_client_fds; }
trap_cleanup

# ---------------------------------------------------------------- tools
ensure_tools() {
  local pkgs=()
  command -v nginx >/dev/null || pkgs+=(nginx) # the backend, whatever the candidates
  if has_cand haproxy; then command -v haproxy >/dev/null || pkgs+=(haproxy); fi
  command -v curl >/dev/null || pkgs+=(curl)
  command -v ss >/dev/null || pkgs+=(iproute2)
  command -v python3 >/dev/null || pkgs+=(python3)
  command -v taskset >/dev/null || pkgs+=(util-linux)
  command -v flock >/dev/null || pkgs+=(util-linux)
  install_pkgs "${pkgs[@]}"
}

# ---------------------------------------------------------------- results
declare -A STATUS=() REASON=() PID_OF=()
declare -A PSS0=() PSS1=() PSS2=() RSS0=() RSS1=() OPEN_S=()

skip() { STATUS[$1]=skipped; REASON[$1]=$2; log "$1: skipped: $2"; }
fail() { STATUS[$1]=failed; REASON[$1]=$2; log "$1: FAILED: $2"; }

# ---------------------------------------------------------------- memory
# proc_tree PID: PID and all its descendants, one per line
proc_tree() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { kids[$2] = kids[$2] " " $1 }
    END {
      queue[1] = root; n = 1
      for (i = 1; i <= n; i++) {
        print queue[i]
        m = split(kids[queue[i]], k, " ")
        for (j = 1; j <= m; j++) queue[++n] = k[j]
      }
    }'
}

# mem_kb PID FIELD: FIELD (Pss, Rss) from smaps_rollup, summed over PID and
# its descendants, in kB. Fails if PID's own reading is unavailable.
mem_kb() {
  local root=$1 field=$2 total=0 p v
  for p in $(proc_tree "$root"); do
    v=$(awk -v f="$field:" '$1 == f {print $2; exit}' "/proc/$p/smaps_rollup" 2>/dev/null || true)
    if [[ -z "$v" ]]; then
      [[ "$p" == "$root" ]] && return 1
      continue # a child that just went away
    fi
    total=$((total + v))
  done
  echo "$total"
}

# established PORT: accepted connections on PORT (the candidate's side)
established() { ss -Htn state established "( sport = :$1 )" | wc -l; }

# wait_established PORT COUNT TIMEOUT_S: wait until COUNT; 1 if not reached
wait_established() {
  local port=$1 want=$2 deadline=$((SECONDS + $3))
  while ((SECONDS < deadline)); do
    (($(established "$port") == want)) && return 0
    sleep 0.5
  done
  (($(established "$port") == want))
}

# ---------------------------------------------------------------- client
# start_client PORT COUNT: run idle-client.py in the background on CPU
# LOAD_CPU, talking through two FIFOs (opened read-write here, so no open
# blocks even if the client dies at once).
start_client() {
  local port=$1 n=$2
  rm -f "$TMP/client.in" "$TMP/client.out"
  mkfifo "$TMP/client.in" "$TMP/client.out"
  taskset -c "$LOAD_CPU" python3 "$CLIENT" --port "$port" --n "$n" --concurrency "$CONCURRENCY" \
    --src-count "$SRC_COUNT" --open-timeout "$OPEN_TIMEOUT" --hold-max $((OPEN_TIMEOUT + 300)) \
    --expect-body "$EXPECTED_BODY" <"$TMP/client.in" >"$TMP/client.out" 2>>"$CLIENT_LOG" &
  CLIENT_PID=$!
  PIDS+=("$CLIENT_PID")
  exec {CLIENT_TO}<>"$TMP/client.in"
  exec {CLIENT_FROM}<>"$TMP/client.out"
}

# client_read TIMEOUT_S: the client's next line into REPLY_LINE; 1 on timeout
# or if the client exited without a line.
REPLY_LINE=""
client_read() {
  local deadline=$((SECONDS + $1))
  REPLY_LINE=""
  while ((SECONDS < deadline)); do
    if read -r -t 1 -u "$CLIENT_FROM" REPLY_LINE; then return 0; fi
    if ! is_alive "$CLIENT_PID"; then
      # it may have written its last line just before exiting
      read -r -t 0.2 -u "$CLIENT_FROM" REPLY_LINE && return 0
      REPLY_LINE="(client exited)"
      return 1
    fi
  done
  REPLY_LINE="(no answer from the client within $1 s)"
  return 1
}

# client_say LINE: one command to the client (1 if it cannot be written)
client_say() {
  [[ -n "$CLIENT_TO" ]] || return 1
  { printf '%s\n' "$1" 1>&"$CLIENT_TO"; } 2>/dev/null
}

close_client_fds() {
  if [[ -n "$CLIENT_TO" ]]; then exec {CLIENT_TO}>&-; CLIENT_TO=""; fi
  if [[ -n "$CLIENT_FROM" ]]; then exec {CLIENT_FROM}<&-; CLIENT_FROM=""; fi
}

# stop_client: ask the client to close its connections, wait for it (bounded)
stop_client() {
  [[ -n "$CLIENT_PID" ]] || return 0
  client_say CLOSE || true
  client_read 30 || log "client did not confirm closing: $REPLY_LINE"
  close_client_fds
  stop_pid "$CLIENT_PID"
  CLIENT_PID=""
}

# ---------------------------------------------------------------- candidates
# start_levee: sets CAND_PID once levee is ready, or calls skip and returns 1
start_levee() {
  local rc=0
  launch_levee idle-levee.toml.tmpl MAX_CONNS="$MAX_CONNS" KEEPALIVE_S="$KEEPALIVE_S" CONNS="$N" || rc=$?
  ((rc == 0)) && return 0
  tail_log "$LEVEE_LOG"
  stop_pid "$CAND_PID"
  if ((rc == 2)); then
    skip levee "binary exited before /readyz answered (log: $LEVEE_LOG)"
  else
    skip levee "no answer from http://127.0.0.1:$LEVEE_ADMIN_PORT/readyz within ${LEVEE_READY_TIMEOUT}s (log: $LEVEE_LOG)"
  fi
  return 1
}

# check_answer CANDIDATE: one request must return 200 with the backend's body
check_answer() {
  local name=$1 port=${PORT_OF[$1]} body
  if ! body=$(curl -fsS -m 5 "http://127.0.0.1:$port/" 2>&1); then
    fail "$name" "check request failed: $body"
    return 1
  fi
  if [[ "$body" != *"$EXPECTED_BODY"* ]]; then
    fail "$name" "check request returned an unexpected body: ${body:0:80}"
    return 1
  fi
}

# measure CANDIDATE: the whole sequence for one running candidate
measure() {
  local name=$1 pid=${PID_OF[$1]} port=${PORT_OF[$1]} n_est t0 open
  if ((WARMUP_CONNS > 0)); then
    log "$name: warm-up: $WARMUP_CONNS connections opened, then closed"
    start_client "$port" "$WARMUP_CONNS"
    if ! client_read $((OPEN_TIMEOUT + 10)) || [[ "$REPLY_LINE" != "READY $WARMUP_CONNS" ]]; then
      fail "$name" "warm-up client: $REPLY_LINE (log: $CLIENT_LOG)"
      stop_client
      return 1
    fi
    stop_client
  fi
  if ! wait_established "$port" 0 30; then
    fail "$name" "$(established "$port") connections still ESTABLISHED 30 s after the warm-up closed them"
    return 1
  fi
  sleep "$SETTLE"
  is_alive "$pid" || { fail "$name" "process exited after the warm-up"; return 1; }
  if ! PSS0[$name]=$(mem_kb "$pid" Pss) || ! RSS0[$name]=$(mem_kb "$pid" Rss); then
    fail "$name" "cannot read /proc/$pid/smaps_rollup"
    return 1
  fi
  log "$name: before: PSS ${PSS0[$name]} kB, RSS ${RSS0[$name]} kB"

  log "$name: opening $N idle keep-alive connections (from $SRC_COUNT source addresses, $CONCURRENCY at a time)"
  t0=$(date +%s.%N)
  start_client "$port" "$N"
  if ! client_read $((OPEN_TIMEOUT + 10)) || [[ "$REPLY_LINE" != "READY $N" ]]; then
    fail "$name" "client could not open $N idle connections: $REPLY_LINE (log: $CLIENT_LOG)"
    stop_client
    return 1
  fi
  open=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  OPEN_S[$name]=$open
  log "$name: $N connections open after ${open}s; settling ${SETTLE}s"
  sleep "$SETTLE"

  # All N open (candidate side, and no EOF on the client side) before and
  # after the reading, so the reading is of N live idle connections.
  n_est=$(established "$port")
  if ((n_est != N)); then
    fail "$name" "$n_est ESTABLISHED connections on port $port, expected $N"
    stop_client
    return 1
  fi
  if ! is_alive "$pid"; then fail "$name" "process exited with the connections open"; stop_client; return 1; fi
  if ! PSS1[$name]=$(mem_kb "$pid" Pss) || ! RSS1[$name]=$(mem_kb "$pid" Rss); then
    fail "$name" "cannot read /proc/$pid/smaps_rollup"
    stop_client
    return 1
  fi
  n_est=$(established "$port")
  client_say CHECK || true
  if ! client_read 20 || [[ "$REPLY_LINE" != "OPEN $N" ]] || ((n_est != N)); then
    fail "$name" "connections closed during the reading: ss counts $n_est, client says '$REPLY_LINE' (expected $N)"
    stop_client
    return 1
  fi
  log "$name: with $N idle: PSS ${PSS1[$name]} kB, RSS ${RSS1[$name]} kB (all $N still ESTABLISHED)"

  stop_client
  if ! wait_established "$port" 0 60; then
    log "$name: $(established "$port") connections still ESTABLISHED 60 s after closing"
  fi
  sleep "$SETTLE"
  if is_alive "$pid" && PSS2[$name]=$(mem_kb "$pid" Pss); then
    log "$name: after closing: PSS ${PSS2[$name]} kB"
  else
    PSS2[$name]=""
  fi
  STATUS[$name]=ok
}

# ---------------------------------------------------------------- report
report() {
  local ts_human=$1 c
  echo "## levee memory per idle connection, $ts_human"
  echo
  echo "- CPU: $(cpu_model) ($(nproc) CPUs online); memory: $(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "- kernel: $(uname -sr)"
  echo "- nginx $(version_of nginx), haproxy $(version_of haproxy), $(python3 --version 2>&1)"
  echo "- levee: rev $(levee_rev)${LEVEE_BIN_RESOLVED:+, binary $LEVEE_BIN_RESOLVED}"
  echo "- method: per candidate, $N idle HTTP/1.1 keep-alive connections, each after one complete \`GET /\` answered 200 by the backend nginx; PSS and RSS from /proc/PID/smaps_rollup (summed over the candidate's processes) ${SETTLE}s after a warm-up of $WARMUP_CONNS connections, and ${SETTLE}s after the $N were open; all $N checked ESTABLISHED (ss) and open (client) around the reading"
  echo "- candidates one at a time, one worker each, on CPU $PROXY_CPU; backend + client on CPU $LOAD_CPU; client keep-alive timeout ${KEEPALIVE_S}s everywhere; connection cap $MAX_CONNS, RLIMIT_NOFILE $NOFILE"
  echo
  echo "| candidate | conns | PSS before (KiB) | PSS with conns (KiB) | Δ PSS (KiB) | **PSS bytes/conn** | RSS bytes/conn | PSS after close (KiB) | open time (s) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  for c in "${CANDS[@]}"; do
    if [[ "${STATUS[$c]:-}" == ok ]]; then
      printf '| %s | %d | %d | %d | %d | **%s** | %s | %s | %s |\n' "$c" "$N" "${PSS0[$c]}" "${PSS1[$c]}" \
        $((${PSS1[$c]} - ${PSS0[$c]})) \
        "$(awk -v a="${PSS0[$c]}" -v b="${PSS1[$c]}" -v n="$N" 'BEGIN {printf "%.0f", (b - a) * 1024 / n}')" \
        "$(awk -v a="${RSS0[$c]}" -v b="${RSS1[$c]}" -v n="$N" 'BEGIN {printf "%.0f", (b - a) * 1024 / n}')" \
        "${PSS2[$c]:-—}" "${OPEN_S[$c]}"
    else
      printf '| %s | %s | — | — | — | — | — | — | — |\n' "$c" "${STATUS[$c]:-not run}"
    fi
  done
  echo
  local notes=0
  for c in "${CANDS[@]}"; do
    if [[ "${STATUS[$c]:-}" != ok ]]; then
      ((notes++ == 0)) && echo "Notes:"
      echo "- $c ${STATUS[$c]:-not run}, not measured: ${REASON[$c]:-}"
    fi
  done
  ((notes > 0)) && echo
  echo "PSS bytes/conn = (PSS with conns − PSS before) × 1024 / conns: user-space memory of the candidate per idle connection."
  echo "Kernel socket memory (buffers, TCP state) is not in PSS and is the same for every candidate."
  echo "PSS after close shows how much of the growth the candidate keeps once the connections are gone (allocator caches, grown tables)."
}

# ---------------------------------------------------------------- main
main() {
  local ts ts_human
  ts=$(date +%Y%m%d-%H%M%S)
  ts_human=$(date '+%Y-%m-%d %H:%M:%S %Z')
  [[ $(nproc --all) -ge 2 ]] || die "need at least 2 CPUs (candidates on CPU $PROXY_CPU, backend and client on CPU $LOAD_CPU)"
  [[ -f "$CLIENT" ]] || die "missing $CLIENT"

  ensure_tools
  take_lock "another bench script (compare.sh or idle-memory.sh) is already running"
  TMP=$(mktemp -d /tmp/levee-bench-idle.XXXXXX)
  mkdir -p "$OUT_DIR"
  local n=1 base=$ts
  while [[ -e "$OUT_DIR/idle-memory-$ts.md" ]]; do ts="$base-$((++n))"; done
  OUT_PREFIX="$OUT_DIR/idle-memory-$ts"
  LEVEE_LOG="$OUT_PREFIX.levee.log"
  CLIENT_LOG="$OUT_PREFIX.client.log"
  : >"$CLIENT_LOG"

  LEVEE_BIN_RESOLVED=""
  if has_cand levee; then prepare_levee || true; fi

  start_backend

  local c
  for c in "${CANDS[@]}"; do
    [[ "${STATUS[$c]:-}" == skipped ]] && continue
    log "---- $c"
    CAND_PID=""
    ports_free "$c" || continue
    case $c in
      levee) start_levee || continue ;;
      nginx) start_nginx idle-nginx-proxy.conf.tmpl MAX_CONNS="$MAX_CONNS" NOFILE="$NOFILE" KEEPALIVE_S="$KEEPALIVE_S" || continue ;;
      haproxy) start_haproxy idle-haproxy.cfg.tmpl MAX_CONNS="$MAX_CONNS" NOFILE="$NOFILE" KEEPALIVE_S="$KEEPALIVE_S" || continue ;;
    esac
    PID_OF[$c]=$CAND_PID
    if check_answer "$c"; then measure "$c" || true; fi
    stop_pid "$CAND_PID"
  done

  stop_pid "$BACKEND_PID"

  local out="$OUT_PREFIX.md"
  report "$ts_human" | tee "$out"
  log "report written to $out (client log: $CLIENT_LOG)"
}

main "$@"
