#!/usr/bin/env bash
# bench/compare.sh: levee, nginx and HAProxy side by side, plus the direct
# path (client -> backend), on one box, one backend, one load generator.
#
# Every proxy candidate gets one worker pinned to CPU 0; the backend (one
# nginx process) and wrk share CPU 1. All candidates run at once (an idle one
# costs nothing); measured runs go round-robin, one candidate at a time.
#
# Environment:
#   RUNS=3                  measured runs per candidate (median + spread reported)
#   DURATION=10s            length of each measured wrk run (N, Ns, Nm)
#   CONNS=64                wrk connections
#   CANDIDATES="direct levee nginx haproxy"   subset / order to run
#   WARMUP=2s               warm-up wrk run before the measured runs
#   LEVEE_BIN=path          use this levee binary, skip `cargo build`
#   LEVEE_READY_TIMEOUT=20  seconds to wait for levee's /readyz
#   CARGO=cargo             cargo executable used for the build
#
# Output: facts + markdown table on stdout, progress on stderr; the report is
# also written to bench/out/compare-<timestamp>.md and the raw wrk output to
# bench/out/compare-<timestamp>.wrk.log.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
CONF_DIR="$BENCH_DIR/conf"
OUT_DIR="$BENCH_DIR/out"
BENCH_NAME=compare
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$BENCH_DIR/lib.sh"

RUNS="${RUNS:-3}"
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-64}"
CANDIDATES="${CANDIDATES:-direct levee nginx haproxy}"
WARMUP="${WARMUP:-2s}"
LEVEE_BIN="${LEVEE_BIN:-}"
LEVEE_READY_TIMEOUT="${LEVEE_READY_TIMEOUT:-20}"
CARGO="${CARGO:-cargo}"

PROXY_CPU=0   # candidates
LOAD_CPU=1    # backend + wrk

BACKEND_PORT=18000
LEVEE_PORT=18080
NGINX_PORT=18081
HAPROXY_PORT=18082
LEVEE_ADMIN_PORT=18901

EXPECTED_BODY="hello from backend"

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# ---------------------------------------------------------------- arguments
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got '$RUNS')"
[[ "$CONNS" =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer (got '$CONNS')"
[[ "$DURATION" =~ ^[1-9][0-9]*[smh]?$ ]] || die "DURATION must look like 10s, 1m or 10 (got '$DURATION')"
[[ "$WARMUP" =~ ^[0-9]+[smh]?$ ]] || die "WARMUP must look like 2s (got '$WARMUP')"
[[ "$LEVEE_READY_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "LEVEE_READY_TIMEOUT must be a positive integer"
parse_candidates direct levee nginx haproxy

# seconds in a wrk duration string
dur_secs() {
  local d=$1
  case "$d" in
    *s) echo "${d%s}" ;;
    *m) echo $((${d%m} * 60)) ;;
    *h) echo $((${d%h} * 3600)) ;;
    *) echo "$d" ;;
  esac
}

# ---------------------------------------------------------------- processes
# On exit, Ctrl-C and TERM included: every process started here is stopped
# by PID and TMP is removed (lib.sh).
trap_cleanup

# ---------------------------------------------------------------- tools
ensure_tools() {
  local pkgs=()
  command -v nginx >/dev/null || pkgs+=(nginx)
  command -v wrk >/dev/null || pkgs+=(wrk)
  if has_cand haproxy; then command -v haproxy >/dev/null || pkgs+=(haproxy); fi
  command -v curl >/dev/null || pkgs+=(curl)
  command -v taskset >/dev/null || pkgs+=(util-linux)
  command -v flock >/dev/null || pkgs+=(util-linux)
  ((${#pkgs[@]} == 0)) && return 0
  install_pkgs "${pkgs[@]}"
  local b
  for b in nginx wrk curl taskset flock; do command -v "$b" >/dev/null || die "$b still missing after install"; done
  if has_cand haproxy; then command -v haproxy >/dev/null || die "haproxy still missing after install"; fi
}

# ---------------------------------------------------------------- results
declare -A STATUS=() REASON=() RPS=() RPS_MIN=() RPS_MAX=() P50=() P99=() CPU_US=() ERRS=() PORT_OF=()
PORT_OF[direct]=$BACKEND_PORT
PORT_OF[levee]=$LEVEE_PORT
PORT_OF[nginx]=$NGINX_PORT
PORT_OF[haproxy]=$HAPROXY_PORT

skip() { # skip CANDIDATE REASON: could not be started
  STATUS[$1]=skipped
  REASON[$1]=$2
  log "SKIP $1: $2"
}
fail() { # fail CANDIDATE REASON: started, but answered wrongly or broke under load
  STATUS[$1]=failed
  REASON[$1]=$2
  log "FAIL $1: $2"
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) exit 1; if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# wrk time value (e.g. 310.00us, 1.20ms, 2.00s, 1.00m) -> milliseconds
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v; sub(/[a-z]+$/, "", n); u = v; sub(/^[0-9.]+/, "", u)
    f = (u=="us") ? 0.001 : (u=="ms") ? 1 : (u=="s") ? 1000 : (u=="m") ? 60000 : (u=="h") ? 3600000 : -1
    if (f < 0 || n == "") exit 1
    printf "%.3f\n", n * f }'
}

cpu_ticks() { # utime+stime of a process (all threads), in clock ticks
  local pid=$1
  [[ -n "$pid" && -r /proc/$pid/stat ]] || { echo 0; return; }
  sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}'
}

# check CANDIDATE: one request must return 200 and the backend's body
check_answer() {
  local name=$1 url="http://127.0.0.1:${PORT_OF[$1]}/" resp code body
  resp=$(curl -sS -m 5 -w '\n%{http_code}' "$url" 2>&1) || {
    fail "$name" "check request to $url failed: $(tail -n1 <<<"$resp")"
    return 1
  }
  code=$(tail -n1 <<<"$resp")
  body=$(sed '$d' <<<"$resp")
  if [[ "$code" != 200 || "$body" != *"$EXPECTED_BODY"* ]]; then
    fail "$name" "wrong answer from $url: HTTP $code, body '$(head -c 80 <<<"$body" | tr '\n' ' ')'"
    return 1
  fi
  log "$name answers correctly on $url"
}

WRK_LOG=""
LEVEE_LOG=""
OUT_PREFIX=""
# Per-candidate accumulators, filled one run at a time (runs are interleaved
# across candidates so that a noisy moment on this box hits all of them).
declare -A RPS_LIST P50_LIST P99_LIST REQS_TOTAL TICKS_TOTAL ERR_TOTAL PID_OF

# warm_up CANDIDATE
warm_up() {
  local name=$1 url="http://127.0.0.1:${PORT_OF[$1]}/"
  local wslack=$(($(dur_secs "$WARMUP") + 15))
  log "$name: warm-up $WARMUP"
  timeout "$wslack" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$WARMUP" "$url" >/dev/null 2>&1 || true
}

# measure_once CANDIDATE RUN: one measured wrk run; 1 on failure
measure_once() {
  local name=$1 i=$2 pid=${PID_OF[$1]:-} url="http://127.0.0.1:${PORT_OF[$1]}/" out
  local mslack=$(($(dur_secs "$DURATION") + 30))
  local t0 t1 rps p50 p99 reqs n2xx sock
  t0=$(cpu_ticks "$pid")
  if ! out=$(timeout "$mslack" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$url" 2>&1); then
    printf '### %s run %d (wrk failed)\n%s\n\n' "$name" "$i" "$out" >>"$WRK_LOG"
    fail "$name" "wrk failed on run $i: $(tail -n1 <<<"$out")"
    return 1
  fi
  t1=$(cpu_ticks "$pid")
  printf '### %s run %d\n%s\n\n' "$name" "$i" "$out" >>"$WRK_LOG"
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  reqs=$(awk '/ requests in / {print $1}' <<<"$out")
  n2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out")
  sock=$(awk '/Socket errors:/ {gsub(",", ""); print $4+$6+$8+$10}' <<<"$out")
  if [[ -z "$rps" || -z "$p50" || -z "$p99" || -z "$reqs" ]]; then
    fail "$name" "could not parse wrk output of run $i (see $WRK_LOG)"
    return 1
  fi
  if ! p50=$(to_ms "$p50") || ! p99=$(to_ms "$p99"); then
    fail "$name" "unknown latency unit in run $i (see $WRK_LOG)"
    return 1
  fi
  ERR_TOTAL[$name]=$((${ERR_TOTAL[$name]:-0} + ${n2xx:-0} + ${sock:-0}))
  REQS_TOTAL[$name]=$((${REQS_TOTAL[$name]:-0} + reqs))
  TICKS_TOTAL[$name]=$((${TICKS_TOTAL[$name]:-0} + t1 - t0))
  RPS_LIST[$name]+="$rps"$'\n'
  P50_LIST[$name]+="$p50"$'\n'
  P99_LIST[$name]+="$p99"$'\n'
  log "$name: run $i/$RUNS: $rps req/s, p50 $p50 ms, p99 $p99 ms${n2xx:+, non-2xx $n2xx}"
}

# summarize CANDIDATE: medians and spread of its runs
summarize() {
  local name=$1 pid=${PID_OF[$1]:-}
  if [[ -n "$pid" ]] && ! is_alive "$pid"; then
    fail "$name" "process exited during the measurement"
    return 1
  fi
  local rps_list=${RPS_LIST[$name]} reqs_total=${REQS_TOTAL[$name]:-0} ticks_total=${TICKS_TOTAL[$name]:-0}
  STATUS[$name]=ok
  RPS[$name]=$(printf '%s' "$rps_list" | median)
  RPS_MIN[$name]=$(printf '%s' "$rps_list" | sort -g | sed -n '1p')
  RPS_MAX[$name]=$(printf '%s' "$rps_list" | sort -g | sed -n '$p')
  P50[$name]=$(printf '%s' "${P50_LIST[$name]}" | median)
  P99[$name]=$(printf '%s' "${P99_LIST[$name]}" | median)
  ERRS[$name]=${ERR_TOTAL[$name]:-0}
  if [[ -n "$pid" ]] && ((reqs_total > 0)); then
    CPU_US[$name]=$(awk -v t="$ticks_total" -v hz="$(getconf CLK_TCK)" -v n="$reqs_total" 'BEGIN {printf "%.2f", t / hz / n * 1e6}')
  else
    CPU_US[$name]="—"
  fi
}

# ---------------------------------------------------------------- candidates
# start_levee: sets CAND_PID once levee is ready, or calls skip and returns 1
start_levee() {
  local rc=0
  launch_levee levee.toml.tmpl || rc=$?
  case $rc in
    0) return 0 ;;
    2)
      local st=0
      wait "$CAND_PID" 2>/dev/null || st=$?
      tail_log "$LEVEE_LOG"
      stop_pid "$CAND_PID"
      skip levee "binary exited (status $st) before /readyz answered (log: $LEVEE_LOG)"
      ;;
    *)
      tail_log "$LEVEE_LOG"
      stop_pid "$CAND_PID"
      skip levee "no answer from http://127.0.0.1:$LEVEE_ADMIN_PORT/readyz within ${LEVEE_READY_TIMEOUT}s (log: $LEVEE_LOG)"
      ;;
  esac
  return 1
}

# ---------------------------------------------------------------- report
ratio() { # ratio A B (req/s)
  if [[ -n "$2" && "$2" != 0 ]]; then awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a / b}'; else echo "—"; fi
}

report() {
  local ts_human=$1 c gov=""
  if [[ -r /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor ]]; then
    gov=", governor $(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor)"
  fi
  echo "## levee side-by-side benchmark, $ts_human"
  echo
  echo "- CPU: $(cpu_model) ($(nproc) CPUs online$gov)"
  echo "- kernel: $(uname -sr)"
  echo "- nginx $(version_of nginx), haproxy $(version_of haproxy), wrk $(version_of wrk)"
  echo "- levee: rev $(levee_rev)${LEVEE_BIN_RESOLVED:+, binary $LEVEE_BIN_RESOLVED}"
  echo "- load: wrk -t1 -c$CONNS -d$DURATION --latency (closed loop), $RUNS run(s) per candidate, interleaved across candidates, after a $WARMUP warm-up"
  echo "- pinning: candidates on CPU $PROXY_CPU (one worker each); backend nginx + wrk on CPU $LOAD_CPU; keep-alive both sides, logging off"
  echo
  echo "| candidate | req/s (median) | spread | p50 ms | p99 ms | vs nginx | vs haproxy | CPU µs/req |"
  echo "|---|---:|---|---:|---:|---:|---:|---:|"
  local ng="" hp=""
  [[ "${STATUS[nginx]:-}" == ok ]] && ng=${RPS[nginx]}
  [[ "${STATUS[haproxy]:-}" == ok ]] && hp=${RPS[haproxy]}
  for c in "${CANDS[@]}"; do
    if [[ "${STATUS[$c]:-}" == ok ]]; then
      local mark="" spread
      ((${ERRS[$c]} > 0)) && mark=" (!)"
      spread=$(awk -v lo="${RPS_MIN[$c]}" -v hi="${RPS_MAX[$c]}" -v m="${RPS[$c]}" \
        'BEGIN {printf "%.0f–%.0f (%.1f%%)", lo, hi, (m > 0) ? (hi - lo) / m * 100 : 0}')
      printf '| %s%s | %.0f | %s | %.3f | %.3f | %s | %s | %s |\n' "$c" "$mark" "${RPS[$c]}" "$spread" \
        "${P50[$c]}" "${P99[$c]}" "$(ratio "${RPS[$c]}" "$ng")" "$(ratio "${RPS[$c]}" "$hp")" "${CPU_US[$c]}"
    else
      printf '| %s | %s | — | — | — | — | — | — |\n' "$c" "${STATUS[$c]:-not run}"
    fi
  done
  echo
  local notes=0
  for c in "${CANDS[@]}"; do
    if [[ "${STATUS[$c]:-}" != ok ]]; then
      ((notes++ == 0)) && echo "Notes:"
      echo "- $c ${STATUS[$c]:-not run}, not measured: ${REASON[$c]:-}"
    elif ((${ERRS[$c]} > 0)); then
      ((notes++ == 0)) && echo "Notes:"
      echo "- (!) $c: ${ERRS[$c]} non-2xx responses or socket errors during the measured runs; its numbers are suspect"
    fi
  done
  ((notes > 0)) && echo
  echo "req/s, p50 and p99 are medians over the runs (each taken separately); spread is min–max req/s and (max−min)/median."
  echo "Latencies are at saturation (closed loop), so they mostly show queueing, not the proxy's own overhead."
  echo "CPU µs/req is the candidate process's user+system CPU over the measured runs divided by the requests served."
}

# ---------------------------------------------------------------- main
main() {
  local ts ts_human
  ts=$(date +%Y%m%d-%H%M%S)
  ts_human=$(date '+%Y-%m-%d %H:%M:%S %Z')
  [[ $(nproc --all) -ge 2 ]] || die "need at least 2 CPUs (candidates on CPU $PROXY_CPU, load on CPU $LOAD_CPU)"

  ensure_tools
  take_lock "another bench/compare.sh is already running"
  TMP=$(mktemp -d /tmp/levee-bench.XXXXXX)
  mkdir -p "$OUT_DIR"
  local n=1 base=$ts
  while [[ -e "$OUT_DIR/compare-$ts.md" || -e "$OUT_DIR/compare-$ts.wrk.log" ]]; do ts="$base-$((++n))"; done
  OUT_PREFIX="$OUT_DIR/compare-$ts"
  WRK_LOG="$OUT_PREFIX.wrk.log"
  LEVEE_LOG="$OUT_PREFIX.levee.log"
  : >"$WRK_LOG"

  LEVEE_BIN_RESOLVED=""
  if has_cand levee; then prepare_levee || true; fi

  start_backend

  # Start every candidate (an idle one costs nothing), check its answer,
  # warm it up; then measure in rounds, each candidate once per round.
  local c ready=()
  for c in "${CANDS[@]}"; do
    [[ "${STATUS[$c]:-}" == skipped ]] && continue
    log "---- $c"
    CAND_PID=""
    if [[ "$c" != direct ]] && ! ports_free "$c"; then continue; fi
    case $c in
      direct) ;;
      levee) start_levee || continue ;;
      nginx) start_nginx nginx-proxy.conf.tmpl || continue ;;
      haproxy) start_haproxy haproxy.cfg.tmpl || continue ;;
    esac
    PID_OF[$c]=$CAND_PID
    if check_answer "$c"; then
      warm_up "$c"
      ready+=("$c")
    elif [[ -n "$CAND_PID" ]]; then
      stop_pid "$CAND_PID"
    fi
  done
  local round failed
  declare -A failed=()
  for ((round = 1; round <= RUNS; round++)); do
    for c in "${ready[@]}"; do
      [[ -n "${failed[$c]:-}" ]] && continue
      measure_once "$c" "$round" || failed[$c]=1
    done
  done
  for c in "${ready[@]}"; do
    [[ -n "${failed[$c]:-}" ]] || summarize "$c" || true
    if [[ -n "${PID_OF[$c]:-}" ]]; then stop_pid "${PID_OF[$c]}"; fi
  done

  stop_pid "$BACKEND_PID"

  local out="$OUT_PREFIX.md"
  report "$ts_human" | tee "$out"
  log "report written to $out (raw wrk output: $WRK_LOG)"
}

main "$@"
