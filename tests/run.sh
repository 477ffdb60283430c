#!/usr/bin/env bash
# THE test command of swallowkeeper.dyups (README.md and .ci/run call it). On a fresh Debian machine, as
# root, it installs what the tests need (Debian packages, a Python virtual environment, a Consul binary),
# then runs every suite. Each suite starts the servers it needs on loopback and stops them after.
#
#   tests/run.sh              everything, in this order
#   tests/run.sh unit integration ...   only the named stages
#
# Stages: unit, integration (modules, Consul, Lua flavor, watcher, playbooks), conformance (dyups
# contract suite; DYUPS_URL=http://... to aim it at your own Tengine; Tengine's own dyups.t with prove,
# its result line repeated in the summary), sanity (ansible-test; then the docs site and the
# execution-environment metadata, tests/tools/publishing.sh), lint
# (ansible-lint), molecule (the role on booted Debian containers over ssh, tests/hosts: flavor
# tengine and nginx under systemd, nginx under supervisor, and a fleet of three proxies against a
# three-server Consul cluster with TLS and ACLs; never on this machine itself), bench (short
# benchmark and resilience runs; results to tests/output/, not to docs/); outside the default, named only:
# demo (playbooks/demo.sh's playbooks and cleanup on a booted container, under supervisor and systemd,
# with restarts of supervisord and reboots: tests/hosts/demo_check.py; its short form is
# tests/tools/molecule.sh demo_host), not in the default run (CI's 35 minutes).
#
# Side by side: when other stages come in one run with molecule, the molecule stage starts in the
# background before the first of them (under `nice -n 10`, its output to tests/output/molecule-stage.log, printed when it
# ends) and the other stages run meanwhile in the foreground with the machine's first claim on the CPU: the
# scenarios mostly wait on ssh round trips to their containers, and they are the longest stage (about 15
# minutes). nice holds only across one scheduler group: with the kernel's autogroups on
# (/proc/sys/kernel/sched_autogroup_enabled), every ssh session in a container is a group of its own at full
# weight, and the integration stage beside them took 1 622 s instead of about 700. So the run turns autogroups
# off for its duration and puts the setting back when it ends; where it cannot (no permission), the molecule
# stage starts only after integration, beside the shorter stages. SKDY_MOLECULE_BACKGROUND=0 runs every stage
# in turn.
#
# Tengine: setup builds one with the role's source path (tests/tools/get-tengine.sh, from $TENGINE_TARBALL
# or ../shared/tengine/tengine-3.2.0.tar.gz; cached in /var/cache/swallowkeeper-dyups/tengine, so only the
# first run builds) and exports TENGINE_BIN (and TENGINE_BIN_2, a second build with other configure arguments, for
# the binary upgrade between two builds); every suite that talks to a proxy then runs on Tengine and the
# Lua flavor. Without a tarball the Tengine cases are skipped and the summary says so; with CI=true a
# missing tarball fails the run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
all=(unit integration conformance sanity lint molecule bench)
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=("${all[@]}")

step() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "setup: Debian packages"
tests/tools/install-system-deps.sh
step "setup: Python environment"
tests/tools/venv.sh
step "setup: Consul"
CONSUL_BIN=$(tests/tools/get-consul.sh)
export CONSUL_BIN
consul_version=$("$CONSUL_BIN" version)  # whole output captured, then cut: no pipe to cut off under pipefail
echo "consul: $CONSUL_BIN (${consul_version%%$'\n'*})"

step "setup: Tengine"
tengine_note=""
tengine_rc=0
TENGINE_BIN=$(tests/tools/get-tengine.sh) || tengine_rc=$?
if [ $tengine_rc -eq 0 ]; then
  export TENGINE_BIN
  echo "tengine: $TENGINE_BIN ($("$TENGINE_BIN" -v 2>&1 | sed -n 1p))"
  # The second build (other configure arguments) that tests/integration/test_binary_upgrade_builds.py upgrades
  # to, built here so that its first build (minutes) is not counted in a test's timeout; cached like the first.
  if TENGINE_BIN_2=$(TENGINE_EXTRA_CONFIGURE=--with-http_gzip_static_module tests/tools/get-tengine.sh); then
    export TENGINE_BIN_2
    echo "tengine: second build $TENGINE_BIN_2"
  else
    unset TENGINE_BIN_2
    echo "tengine: the second build failed (test_binary_upgrade_builds.py will say why)"
  fi
else
  unset TENGINE_BIN
  if [ $tengine_rc -eq 3 ]; then
    tengine_note="Tengine parts NOT RUN: no Tengine tarball (set TENGINE_TARBALL=/path/to/tengine-3.2.0.tar.gz)"
  else
    tengine_note="Tengine parts NOT RUN: the Tengine build failed (tests/tools/get-tengine.sh)"
  fi
  echo "tengine: $tengine_note"
  if [ "${CI:-}" = true ]; then
    echo "tengine: CI=true needs a Tengine: failing the run"
    exit 1
  fi
fi

export PATH="$root/.venv/bin:$PATH"
mkdir -p tests/output
# Written by the conformance stage (Tengine's own dyups.t, tests/conformance/test_tengine_dyups_suite.py).
dyups_t_result=tests/output/tengine-dyups-t.txt
rm -f "$dyups_t_result"
pytest=(python -m pytest -p no:cacheprovider -o console_output_style=classic)
status=0
results=()   # one line per stage, printed again at the very end (a CI log's tail is what one reads first)
failures=()  # the log of each failed stage, searched at the end for what failed
run() {  # run a stage, remember failure, keep going so one run reports every broken stage
  local name=$1; shift
  step "$name"
  local start=$SECONDS log=tests/output/stage-$name.log
  # tee reads to the end, so the pipeline's status under pipefail is the stage's own
  if "$@" 2>&1 | tee "$log"; then results+=("$name: passed in $((SECONDS - start))s")
  else results+=("$name: FAILED in $((SECONDS - start))s"); failures+=("$log"); status=1; fi
  echo "--- ${results[${#results[@]}-1]}"
}
# The molecule stage in the background (see the header): started before the first stage (after integration
# when autogroups stay on), awaited at the end. Its containers boot and install packages while the unit stage
# runs: it is the run's longest path (CI's stop 30: 1 731 s of 1 928), so every second it starts earlier counts.
molecule_log=tests/output/molecule-stage.log
molecule_pid=""
molecule_start=0
molecule_background=0
if [ "${SKDY_MOLECULE_BACKGROUND:-1}" = 1 ] && [ ${#stages[@]} -gt 1 ] \
   && [ "${stages[${#stages[@]}-1]}" != molecule ]; then
  for stage in "${stages[@]}"; do [ "$stage" = molecule ] && molecule_background=1; done
fi
molecule_after=start
autogroup=/proc/sys/kernel/sched_autogroup_enabled
autogroup_was=""
if [ $molecule_background = 1 ] && [ -r $autogroup ] && [ "$(cat $autogroup)" = 1 ]; then
  if { echo 0 > $autogroup; } 2>/dev/null; then
    autogroup_was=1
    echo "scheduler autogroups off for this run (the molecule stage runs under nice beside the others)"
  else
    molecule_after=integration
    echo "scheduler autogroups stay on (no permission): the molecule stage starts after integration"
  fi
fi
# shellcheck disable=SC2317  # called from the traps below
stop_molecule() {  # an interrupted run stops the scenarios (molecule.sh removes their containers itself)
  if [ -n "$molecule_pid" ]; then kill -TERM "$molecule_pid" 2>/dev/null || true; wait "$molecule_pid" || true; fi
  if [ -n "$autogroup_was" ]; then echo "$autogroup_was" > $autogroup || true; autogroup_was=""; fi
}
trap stop_molecule EXIT
trap 'stop_molecule; exit 130' INT
trap 'stop_molecule; exit 143' TERM
start_molecule() {
  step "molecule (started in the background; its output follows when it ends: $molecule_log)"
  molecule_start=$SECONDS
  nice -n 10 tests/tools/molecule.sh > "$molecule_log" 2>&1 &
  molecule_pid=$!
}
wait_molecule() {
  [ -n "$molecule_pid" ] || return 0
  local rc=0
  wait "$molecule_pid" || rc=$?
  molecule_pid=""
  step "molecule (ended; its output)"
  cat "$molecule_log"
  if [ $rc -eq 0 ]; then results+=("molecule: passed in $((SECONDS - molecule_start))s (in the background)")
  else results+=("molecule: FAILED in $((SECONDS - molecule_start))s (in the background)"); failures+=("$molecule_log")
    status=1; fi
  echo "--- ${results[${#results[@]}-1]}"
  stop_molecule  # puts the autogroup setting back
}
for stage in "${stages[@]}"; do
  if [ $molecule_background = 1 ] && [ $molecule_start = 0 ] \
     && { [ $molecule_after = start ] || { [ "$stage" != unit ] && [ "$stage" != integration ]; }; }; then
    start_molecule
  fi
  case "$stage" in
    unit)        run unit "${pytest[@]}" -q --timeout 300 tests/unit ;;
    integration) run integration "${pytest[@]}" -q --timeout 600 --durations=25 tests/integration ;;
    conformance) run conformance "${pytest[@]}" -q --timeout 300 tests/conformance ;;
    sanity)      run sanity tests/tools/sanity.sh
                 run publishing tests/tools/publishing.sh ;;
    lint)        run lint tests/tools/lint.sh ;;
    molecule)    [ $molecule_background = 1 ] || run molecule tests/tools/molecule.sh ;;
    bench)       run bench tests/tools/bench.sh --short ;;
    demo)        run demo python -m tests.hosts.demo_check ;;
    *) echo "unknown stage: $stage (known: ${all[*]} demo)"; exit 2 ;;
  esac
done
wait_molecule
step "done"
if [ -f "$dyups_t_result" ]; then
  dyups_t_line=$(sed -n 1p "$dyups_t_result")
  echo "$dyups_t_line (whole output: $dyups_t_result)"
fi
[ -n "$tengine_note" ] && echo "$tengine_note (their cases are counted as skipped above)"
printf '%s\n' "${results[@]}"
for log in "${failures[@]}"; do  # what failed, from each failed stage's log (pytest's FAILED/ERROR lines,
  echo "what failed, from $log:"  # a bench part's or a scenario's failure)
  grep -a -m 40 -E '^(FAILED|ERROR)[: ]|--- bench: .* FAILED|^fatal: |FAILED! =>|exit [1-9][0-9]* after|failed=[1-9]' "$log" || echo "  (no line matched: read the log)"
done
[ $status -eq 0 ] && echo "all stages passed" || echo "some stages FAILED"
exit $status
