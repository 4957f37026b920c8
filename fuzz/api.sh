#!/usr/bin/env bash
# Fuzzes levee's admin API with Schemathesis: starts `levee demo`, reads the
# OpenAPI document it serves, and sends generated requests to every operation
# (except the endless event stream) with all of Schemathesis's checks: no
# 5xx, documented statuses, content types and bodies, valid requests accepted,
# invalid ones refused. From the repository root, after `cargo build -p levee`:
#
#   fuzz/api.sh                            # 50 examples per operation, seed 1
#   EXAMPLES=500 SEED=7 fuzz/api.sh
#   LEVEE_BIN=target/release/levee fuzz/api.sh   # relative to the repo root
#
# The settings, and the few answers accepted by design, are in
# fuzz/schemathesis.toml. Schemathesis itself (pinned) goes to fuzz/.venv on
# the first run. The report (JUnit, HAR, levee's log, the console output)
# goes to fuzz/api-report/, replaced on each run; a failure prints a curl
# command that reproduces it.
#
# `levee demo` takes fixed ports (127.0.0.1:8080, admin 9901, backends
# 9101-9103 and 9201-9202), so nothing else may hold them while this runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

SCHEMATHESIS_VERSION=4.32.5
EXAMPLES=${EXAMPLES:-50}
SEED=${SEED:-1}
TIMEOUT=${TIMEOUT:-900}   # seconds for the whole Schemathesis run
READY_WAIT=${READY_WAIT:-20}
bin=${LEVEE_BIN:-target/debug/levee}
case $bin in /*) ;; *) bin=$root/$bin ;; esac
admin=http://127.0.0.1:9901

if [ ! -x "$bin" ]; then
  echo "no levee binary at $bin: run \`cargo build -p levee\` first (or set LEVEE_BIN)" >&2
  exit 1
fi

cd "$root/fuzz"

if ! .venv/bin/st --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
  echo "== installing schemathesis $SCHEMATHESIS_VERSION in fuzz/.venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

for port in 8080 9901 9101 9102 9103 9201 9202; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "127.0.0.1:$port is taken; levee demo needs it (see \`ss -ltnp\`)" >&2
    exit 1
  fi
done

report=api-report
rm -rf "$report"
mkdir -p "$report"
# Hypothesis keeps its own files (not examples: the database is off) here
# rather than in fuzz/.hypothesis.
export HYPOTHESIS_STORAGE_DIRECTORY=$report/hypothesis

pid=
stop() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$bin" demo >"$report/levee.log" 2>&1 &
pid=$!
echo "== levee demo (pid $pid, $bin)"
deadline=$((SECONDS + READY_WAIT))
until curl -fsS -o /dev/null --max-time 1 "$admin/readyz" 2>/dev/null; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "levee demo exited early; its log:" >&2
    tail -n 20 "$report/levee.log" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "levee demo not ready after ${READY_WAIT}s; see fuzz/$report/levee.log" >&2
    exit 1
  fi
  sleep 0.5
done

echo "== schemathesis: $EXAMPLES examples per operation, seed $SEED, at most ${TIMEOUT}s"
set +e
timeout -k 10 "$TIMEOUT" .venv/bin/st --config-file schemathesis.toml run \
  --checks all --seed "$SEED" --max-examples "$EXAMPLES" \
  "$admin/api/v1/openapi.json" 2>&1 | tee "$report/output.txt"
rc=${PIPESTATUS[0]}
set -e

echo "== report: fuzz/$report/ (output.txt, junit and har files, levee.log)"
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "!! schemathesis did not finish within ${TIMEOUT}s" >&2
  exit 1
elif [ "$rc" -ne 0 ]; then
  echo "!! schemathesis found failures (exit $rc): see fuzz/$report/output.txt" >&2
  exit 1
fi
