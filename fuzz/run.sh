#!/usr/bin/env bash
# Fuzzes levee's own parsers with libFuzzer (cargo fuzz), each target for
# SECONDS_EACH seconds (default 60), or the targets named:
#
#   fuzz/run.sh                      # all, a minute each
#   SECONDS_EACH=600 fuzz/run.sh chunked http1_request
#
# The checks are in crates/levee-proxy/src/fuzz.rs. New coverage goes to
# fuzz/corpus/<target> (not committed); a failing input is left in
# fuzz/artifacts/<target> (with the run's log beside it). Move it to
# fuzz/regressions/<target>/ with the fix, so `cargo test` replays it from
# then on. Every target runs even when one fails; the exit status says.
#
# Runs on the stable toolchain without a sanitizer (`-s none`): levee's
# crates forbid unsafe code, so what the fuzzers look for is panics and
# broken invariants, which need no sanitizer to show.
set -euo pipefail
cd "$(dirname "$0")"

SECONDS_EACH=${SECONDS_EACH:-60}
all=(http1_request http1_response chunked proxy_v2 resp h2_frames config)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# Debug assertions on: an arithmetic overflow is a finding too.
cargo fuzz build -s none -a
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "regressions/$t" "artifacts/$t"
  [ "$t" != config ] || cp ../examples/*.toml "corpus/$t/"
  # Only what this run finds counts: inputs of earlier runs may still lie
  # in artifacts/ after their fix.
  marker=$(mktemp)
  echo "== $t: ${SECONDS_EACH}s"
  log="artifacts/$t.log"
  rc=0
  cargo fuzz run -s none -a "$t" "corpus/$t" "seeds/$t" "regressions/$t" -- \
    -max_total_time="$SECONDS_EACH" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1 || rc=$?
  grep -E '^(stat::number_of_executed_units|stat::peak_rss|==[0-9]+== ERROR|.*panicked at|.*Test unit written)' "$log" || true
  found=$(find "artifacts/$t" -type f -newer "$marker" | head -1)
  rm -f "$marker"
  if [ "$rc" -ne 0 ] || [ -n "$found" ]; then
    echo "!! $t failed (exit $rc): ${found:-see $log}" >&2
    status=1
  fi
done
exit "$status"
