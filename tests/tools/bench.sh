#!/usr/bin/env bash
# THE benchmark and resilience entry point of swallowkeeper.dyups (issue 7).
#
#   tests/tools/bench.sh            the long version: every benchmark and resilience part at full size;
#                                   raw results to tests/output/bench-long/ (for docs/benchmarks.md and
#                                   docs/resilience.md, which are updated by hand from them)
#   tests/tools/bench.sh --short    what tests/run.sh's bench stage (CI) runs: small sizes, about 10
#                                   minutes; results to tests/output/bench-short/, never to docs/
#
# Parts: the Lua flavor (tests/benchmarks/bench_lua.py), the watcher (tests/benchmarks/bench_watcher.py),
# the fleet fan-out (long only: tests/benchmarks/bench_fanout.py, N watchers' blocking queries against three Consul servers),
# the resilience suite (tests/resilience/: scale events against the reload approach, faults, fuzzed
# Consul answers; --short runs its pytest properties, the long version tests/resilience/run.py), and
# (long only) the hypothesis properties with the long profile. Every part runs under `timeout`; every
# server a part starts (nginx, Consul, backends, watcher, load generators) is on loopback and is stopped
# by the part itself. The exit status is 1 when any part failed; the others still run.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

mode=long
case "${1:-}" in
  --short) mode=short ;;
  "") ;;
  *) echo "usage: $0 [--short]" >&2; exit 2 ;;
esac

# The same set-up as tests/run.sh (each step is idempotent and quick once done).
tests/tools/install-system-deps.sh >/dev/null
tests/tools/venv.sh >/dev/null
CONSUL_BIN=$(tests/tools/get-consul.sh)
export CONSUL_BIN
# Tengine (the role's build, cached): every part runs on it too; without a tarball its figures are not measured.
if [ -z "${TENGINE_BIN:-}" ]; then
  TENGINE_BIN=$(tests/tools/get-tengine.sh) || { TENGINE_BIN=""; echo "bench: no Tengine: its figures are NOT measured"; }
fi
export TENGINE_BIN
export PATH="$root/.venv/bin:$PATH"
py=(python)
pytest=(python -m pytest -p no:cacheprovider -o console_output_style=classic)

out=tests/output/bench-$mode
mkdir -p "$out"
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "mode: $mode"
  echo "nproc: $(nproc)"
  echo "kernel: $(uname -r)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "memory: $(grep -m1 MemTotal /proc/meminfo | awk '{print $2 " kB"}')"
  echo "nginx: $(nginx -v 2>&1)"
  # Outputs are captured whole and cut afterwards (a pipe into head can fail by chance under pipefail).
  consul_version=$("$CONSUL_BIN" version)
  echo "consul: ${consul_version%%$'\n'*}"
  tengine_version=${TENGINE_BIN:+$("$TENGINE_BIN" -v 2>&1)}
  echo "tengine: ${tengine_version%%$'\n'*}"
  wrk_version=$(wrk -v 2>&1 || true)
  echo "wrk: ${wrk_version%%$'\n'*}"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} > "$out/machine.txt"
cat "$out/machine.txt"

status=0
total_start=$SECONDS
part() {  # part NAME SECONDS command...: run under timeout, log to $out/NAME.log, remember failure
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  printf '\n=== bench: %s (%s, limit %ss)\n' "$name" "$(date -u +%H:%M:%S)" "$limit"
  echo "\$ $*" > "$out/$name.log"
  if timeout --kill-after=30 "$limit" "$@" 2>&1 | tee -a "$out/$name.log"; then
    echo "--- bench: $name passed in $((SECONDS - start))s" | tee -a "$out/$name.log"
  else
    echo "--- bench: $name FAILED in $((SECONDS - start))s" | tee -a "$out/$name.log"
    status=1
  fi
}

if [ "$mode" = short ]; then
  part lua 420 "${py[@]}" tests/benchmarks/bench_lua.py --short --output "$out/bench_lua.json"
  part watcher 420 "${py[@]}" tests/benchmarks/bench_watcher.py --short --json "$out/bench_watcher.json"
  # bench_fanout.py --quick (about 45 s) is not part of the short run: CI's 30 minutes; its parser and its
  # queries have unit tests (tests/unit/test_bench_fanout.py), its figures come from the long run.
  part resilience 900 "${pytest[@]}" -q --timeout 600 tests/resilience
  [ -f tests/output/resilience-short.json ] && cp tests/output/resilience-short.json "$out/resilience.json"
else
  part lua 1800 "${py[@]}" tests/benchmarks/bench_lua.py --output "$out/bench_lua.json"
  part watcher 5400 "${py[@]}" tests/benchmarks/bench_watcher.py --json "$out/bench_watcher.json"
  part fanout 2400 "${py[@]}" tests/benchmarks/bench_fanout.py --json "$out/bench_fanout.json"
  part resilience 5400 "${py[@]}" tests/resilience/run.py --output "$out/resilience.json"
  part properties 3600 env HYPOTHESIS_PROFILE=long "${pytest[@]}" -q tests/unit/property
  [ -f tests/output/property-cases-long.json ] && cp tests/output/property-cases-long.json "$out/"
fi

echo
echo "bench ($mode): $((SECONDS - total_start))s in all; results in $out/"
[ $status -eq 0 ] && echo "all bench parts passed" || echo "some bench parts FAILED"
exit $status
