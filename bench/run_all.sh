#!/usr/bin/env bash
# bench/run_all.sh - the one command that produces the figures of bench/RESULTS.md and the
# README's performance section: builds the benchmarks in release mode (NDEBUG) and runs every
# one with enough rounds for the tables, writing the raw output (with the conditions: commit,
# machine, load, compiler) to one file.
#
#   bench/run_all.sh [OUTPUT]          default OUTPUT: bench/results-<UTC time>.txt
#   RUNS=7 bench/run_all.sh            more rounds per row (default 5, after 1 warm-up round)
#   SMOKE=1 bench/run_all.sh           every bench once at its tiny size (seconds; what CI runs)
#   BUILD=dir                          build directory (default build-bench; reused if present)
#
# Run it on a quiet machine: it prints the load average first and warns above 0.5. On the
# 2-core reference VM it takes about 7 minutes (Redis rows included: bench_redis starts its own
# redis-server on a free loopback port, as the tests do; without redis-server they are skipped).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$root/build-bench}
runs=${RUNS:-5}
out=${1:-$root/bench/results-$(date -u +%Y%m%dT%H%M%SZ).txt}
smoke=${SMOKE:-0}

if [ ! -f "$build/build.ninja" ]; then
  meson setup "$build" "$root" --buildtype=release -Db_ndebug=true \
    -Dbench=enabled -Dtests=disabled -Dexamples=disabled >/dev/null
fi

# name | arguments for the full run (sizes chosen so that the whole script stays under ~8 min
# on 2 cores while every headline run lasts well over 100 ms)
benches=(
  "bench_queue|--items 2000000"
  "bench_executor|--items 1000000"
  "bench_patterns|--items 2000000"
  "bench_limiters|--items 4000000"
  "bench_redis|--items 50000"
)
# Written in parallel by another change; run when built by bench/meson.build, at its default size.
if [ -f "$root/bench/bench_redis_async.cpp" ] && grep -q bench_redis_async "$root/bench/meson.build"; then
  benches+=("bench_redis_async|")
fi

targets=()
for b in "${benches[@]}"; do targets+=("bench/${b%%|*}"); done
ninja -C "$build" "${targets[@]}" >/dev/null

load=$(cut -d' ' -f1-3 /proc/loadavg)
{
  echo "# spindle benchmarks, raw output of bench/run_all.sh"
  echo "date:     $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "commit:   $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "machine:  $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "kernel:   $(uname -sr)"
  echo "compiler: $(c++ --version | head -1)"
  echo "load:     $load (1, 5, 15 min) at the start"
  echo "rounds:   $([ "$smoke" = 1 ] && echo 'smoke (1, no warm-up)' || echo "$runs after 1 warm-up")"
  echo "redis:    $(redis-server --version 2>/dev/null | cut -d' ' -f3 || echo 'not found')"
} | tee "$out"
if awk -v l="${load%% *}" 'BEGIN { exit !(l > 0.5) }'; then
  echo "WARNING: load average ${load%% *} > 0.5: the machine is not quiet; figures will be noisy" | tee -a "$out"
fi

status=0
start_all=$(date +%s)
for b in "${benches[@]}"; do
  name=${b%%|*}
  args=${b#*|}
  if [ "$smoke" = 1 ]; then args="--smoke"; else args="$args --runs $runs"; fi
  echo | tee -a "$out"
  echo "## $name $args" | tee -a "$out"
  t0=$(date +%s)
  # shellcheck disable=SC2086  # args is a word list on purpose
  if ! timeout 1200 "$build/bench/$name" $args 2>&1 | tee -a "$out"; then
    echo "FAILED: $name (exit ${PIPESTATUS[0]})" | tee -a "$out"
    status=1
  fi
  echo "($name took $(( $(date +%s) - t0 )) s)" | tee -a "$out"
done
echo | tee -a "$out"
echo "total: $(( $(date +%s) - start_all )) s; load at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out"
echo "raw output: $out"
exit $status
