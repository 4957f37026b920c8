# shellcheck shell=bash
# bench/lib.sh: helpers shared by the bench scripts. Sourced, not run:
#
#   BENCH_NAME=compare                      # prefix of the log lines
#   source "$BENCH_DIR/lib.sh"
#
# It only defines functions and the state they share (PIDS, TMP, LAST_PID,
# CAND_PID); it starts nothing and sets no trap until the script calls
# trap_cleanup.
#
# What the functions read from the script, where they use it: CANDIDATES,
# ROOT, CONF_DIR, OUT_PREFIX, PROXY_CPU, LOAD_CPU, PORT_OF (candidate ->
# port), BACKEND_PORT, LEVEE_PORT, LEVEE_ADMIN_PORT, NGINX_PORT,
# HAPROXY_PORT, LEVEE_BIN, LEVEE_LOG, LEVEE_READY_TIMEOUT, CARGO, and a
# function `skip CANDIDATE REASON`. A script may define `on_cleanup`: it
# runs on exit, before the processes are stopped.

: "${BENCH_NAME:?set BENCH_NAME before sourcing bench/lib.sh}"

log() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }

# ---------------------------------------------------------------- candidates
# parse_candidates KNOWN...: split CANDIDATES into the array CANDS; dies if
# it is empty or names a candidate not in KNOWN.
parse_candidates() {
  read -r -a CANDS <<<"$CANDIDATES"
  ((${#CANDS[@]} > 0)) || die "CANDIDATES is empty"
  local c
  for c in "${CANDS[@]}"; do
    [[ " $* " == *" $c "* ]] || die "unknown candidate '$c' (known: $*)"
  done
}
has_cand() { [[ " ${CANDS[*]} " == *" $1 "* ]]; }

# ---------------------------------------------------------------- processes
PIDS=()
TMP=""

is_alive() {
  local pid=$1 state
  [[ -r /proc/$pid/stat ]] || return 1
  state=$(sed -n 's/.*) \(.\).*/\1/p' "/proc/$pid/stat" 2>/dev/null || true)
  [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

stop_pid() {
  local pid=$1 i
  if is_alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      is_alive "$pid" || break
      sleep 0.1
    done
    if is_alive "$pid"; then
      log "pid $pid did not stop on TERM, sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# cleanup: the EXIT trap. Stops every PID in PIDS and removes TMP.
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if declare -F on_cleanup >/dev/null; then on_cleanup; fi
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [[ -n "$TMP" && -d "$TMP" ]]; then rm -rf "$TMP"; fi
  exit "$rc"
}

trap_cleanup() {
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# start_bg CPU LOGFILE CMD...: start CMD pinned to CPU; sets LAST_PID.
# taskset (and env, when used in CMD) exec the command, so $! is its PID.
LAST_PID=""
start_bg() {
  local cpu=$1 logf=$2
  shift 2
  taskset -c "$cpu" "$@" >"$logf" 2>&1 </dev/null &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_http URL TIMEOUT_S [PID]: 0 ready, 1 timed out, 2 process exited
wait_http() {
  local url=$1 timeout=$2 pid=${3:-} deadline
  deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    if [[ -n "$pid" ]] && ! is_alive "$pid"; then return 2; fi
    if curl -fsS -m 1 -o /dev/null "$url" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  return 1
}

# render TEMPLATE OUT KEY=VALUE...: replace @KEY@ by VALUE
render() {
  local tmpl=$1 out=$2
  shift 2
  [[ -f "$tmpl" ]] || die "missing template $tmpl"
  local args=() kv
  for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
  sed "${args[@]}" "$tmpl" >"$out"
  if grep -v '^[[:space:]]*#' "$out" | grep -q '@[A-Z][A-Z_]*@'; then die "unfilled placeholder in $out"; fi
}

tail_log() {
  if [[ -f "$1" ]]; then tail -n "${2:-15}" "$1" | sed 's/^/    | /' >&2 || true; fi
}

# ---------------------------------------------------------------- setup
# install_pkgs PKG...: apt-get install PKGs (as root, or with sudo); nothing
# to do without PKGs.
install_pkgs() {
  (($# == 0)) && return 0
  local apt=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "need to install $* but not root and no sudo"
    apt=(sudo)
  fi
  log "installing $* (apt-get)"
  apt+=(env DEBIAN_FRONTEND=noninteractive apt-get)
  if ! "${apt[@]}" install -y --no-install-recommends "$@" >&2; then
    log "install failed, running apt-get update and retrying"
    "${apt[@]}" update >&2
    "${apt[@]}" install -y --no-install-recommends "$@" >&2
  fi
}

# take_lock MESSAGE: one benchmark at a time, or die with MESSAGE.
# compare.sh and idle-memory.sh take the same lock: they would share ports
# and CPUs, and a load run would disturb the memory readings.
take_lock() {
  exec 9>"${TMPDIR:-/tmp}/levee-bench-compare.lock"
  flock -n 9 || die "$1"
}

prepare_levee() {
  if [[ -n "$LEVEE_BIN" ]]; then
    if [[ -x "$LEVEE_BIN" && -f "$LEVEE_BIN" ]]; then
      LEVEE_BIN_RESOLVED=$LEVEE_BIN
      log "using LEVEE_BIN=$LEVEE_BIN (no build)"
      return 0
    fi
    skip levee "LEVEE_BIN=$LEVEE_BIN is not an executable file"
    return 1
  fi
  local target=${CARGO_TARGET_DIR:-$ROOT/target}
  [[ "$target" == /* ]] || target="$ROOT/$target"
  local blog="$OUT_PREFIX.levee-build.log"
  log "building levee: $CARGO build --profile dist -p levee (log: $blog)"
  if ! (cd "$ROOT" && "$CARGO" build --profile dist -p levee) 2>&1 | tee "$blog" >&2; then
    skip levee "cargo build --profile dist -p levee failed (see $blog)"
    return 1
  fi
  LEVEE_BIN_RESOLVED="$target/dist/levee"
  if [[ ! -x "$LEVEE_BIN_RESOLVED" ]]; then
    skip levee "build succeeded but $LEVEE_BIN_RESOLVED is missing"
    return 1
  fi
}

# ---------------------------------------------------------------- backend, candidates
start_backend() {
  port_in_use "$BACKEND_PORT" && die "port $BACKEND_PORT is already in use"
  mkdir -p "$TMP/backend-tmp"
  render "$CONF_DIR/backend-nginx.conf.tmpl" "$TMP/backend.conf" TMP="$TMP" BACKEND_PORT="$BACKEND_PORT"
  start_bg "$LOAD_CPU" "$TMP/backend.out" nginx -p "$TMP/backend-tmp" -e "$TMP/backend-error.log" -c "$TMP/backend.conf"
  BACKEND_PID=$LAST_PID
  local rc=0
  wait_http "http://127.0.0.1:$BACKEND_PORT/" 10 "$BACKEND_PID" || rc=$?
  if ((rc != 0)); then
    tail_log "$TMP/backend.out"
    tail_log "$TMP/backend-error.log"
    die "backend nginx did not come up on 127.0.0.1:$BACKEND_PORT"
  fi
  log "backend nginx up on 127.0.0.1:$BACKEND_PORT (pid $BACKEND_PID, CPU $LOAD_CPU)"
}

# ports_free CANDIDATE: 0 if its port (and for levee its admin port) is
# free; otherwise skips it and returns 1.
ports_free() {
  if port_in_use "${PORT_OF[$1]}"; then
    skip "$1" "port ${PORT_OF[$1]} is already in use by another process"
    return 1
  fi
  if [[ "$1" == levee ]] && port_in_use "$LEVEE_ADMIN_PORT"; then
    skip levee "admin port $LEVEE_ADMIN_PORT is already in use by another process"
    return 1
  fi
}

# The candidates' starters set CAND_PID. start_nginx and start_haproxy
# return 0 once the candidate answers, or call skip and return 1.
CAND_PID=""

# launch_levee TEMPLATE [KEY=VALUE...]: start levee on PROXY_CPU with
# conf/TEMPLATE (given PORT, ADMIN_PORT, BACKEND_PORT and the KEY=VALUEs) and
# wait for its /readyz; returns wait_http's status, the caller handles a
# failure.
launch_levee() {
  local tmpl=$1 rc=0
  shift
  render "$CONF_DIR/$tmpl" "$TMP/levee.toml" \
    PORT="$LEVEE_PORT" ADMIN_PORT="$LEVEE_ADMIN_PORT" BACKEND_PORT="$BACKEND_PORT" "$@"
  start_bg "$PROXY_CPU" "$LEVEE_LOG" env RUST_LOG=warn "$LEVEE_BIN_RESOLVED" run -c "$TMP/levee.toml"
  CAND_PID=$LAST_PID
  wait_http "http://127.0.0.1:$LEVEE_ADMIN_PORT/readyz" "$LEVEE_READY_TIMEOUT" "$CAND_PID" || rc=$?
  return "$rc"
}

# start_nginx TEMPLATE [KEY=VALUE...]: the nginx proxy, conf/TEMPLATE given
# TMP, PORT, BACKEND_PORT and the KEY=VALUEs
start_nginx() {
  local tmpl=$1 rc=0
  shift
  mkdir -p "$TMP/nginx-proxy-tmp"
  render "$CONF_DIR/$tmpl" "$TMP/nginx-proxy.conf" \
    TMP="$TMP" PORT="$NGINX_PORT" BACKEND_PORT="$BACKEND_PORT" "$@"
  start_bg "$PROXY_CPU" "$TMP/nginx-proxy.out" nginx -p "$TMP/nginx-proxy-tmp" -e "$TMP/nginx-proxy-error.log" -c "$TMP/nginx-proxy.conf"
  CAND_PID=$LAST_PID
  wait_http "http://127.0.0.1:$NGINX_PORT/" 10 "$CAND_PID" || rc=$?
  ((rc == 0)) && return 0
  tail_log "$TMP/nginx-proxy.out"
  tail_log "$TMP/nginx-proxy-error.log"
  stop_pid "$CAND_PID"
  skip nginx "nginx proxy did not come up on 127.0.0.1:$NGINX_PORT"
  return 1
}

# start_haproxy TEMPLATE [KEY=VALUE...]: HAProxy, conf/TEMPLATE given PORT,
# BACKEND_PORT and the KEY=VALUEs
start_haproxy() {
  local tmpl=$1 rc=0
  shift
  render "$CONF_DIR/$tmpl" "$TMP/haproxy.cfg" PORT="$HAPROXY_PORT" BACKEND_PORT="$BACKEND_PORT" "$@"
  start_bg "$PROXY_CPU" "$TMP/haproxy.log" haproxy -db -f "$TMP/haproxy.cfg"
  CAND_PID=$LAST_PID
  wait_http "http://127.0.0.1:$HAPROXY_PORT/" 10 "$CAND_PID" || rc=$?
  ((rc == 0)) && return 0
  tail_log "$TMP/haproxy.log"
  stop_pid "$CAND_PID"
  skip haproxy "haproxy did not come up on 127.0.0.1:$HAPROXY_PORT"
  return 1
}

# ---------------------------------------------------------------- report facts
version_of() {
  command -v "$1" >/dev/null || { echo "not installed"; return; }
  case $1 in
    nginx) nginx -v 2>&1 | sed -n 's|.*nginx/||p' ;;
    haproxy) haproxy -v 2>&1 | sed -n '1s/^HAProxy version \([^ ]*\).*/\1/p' ;;
    wrk) { wrk -v 2>&1 || true; } | sed -n '1s/^wrk \([^ ]*\).*/\1/p' ;;
  esac
}

levee_rev() {
  local rev dirty=""
  if rev=$(git -C "$ROOT" --no-optional-locks rev-parse --short HEAD 2>/dev/null); then
    [[ -n "$(git -C "$ROOT" --no-optional-locks status --porcelain --untracked-files=no 2>/dev/null)" ]] && dirty="+dirty"
    echo "$rev$dirty"
  else
    echo "unknown (no git commit yet)"
  fi
}

# cpu_model: the CPU's model name, or the machine type if /proc/cpuinfo has none
cpu_model() {
  local m
  m=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
  [[ -z "$m" ]] && m=$(uname -m)
  echo "$m"
}
