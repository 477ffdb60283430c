#!/usr/bin/env bash
# The role's molecule scenarios (extensions/molecule/). tests/run.sh calls it as the `molecule` stage.
#
#   tests/tools/molecule.sh                      every scenario on test hosts (see below), molecule test
#   tests/tools/molecule.sh tengine_host         one scenario (molecule test)
#   tests/tools/molecule.sh tengine_host converge [ARGS]   another molecule command; on a test host the host
#                                                stays up: SKDY_RUN=<run> reuses it next time,
#                                                `python -m tests.hosts down <run>` removes it
#
# Scenarios whose name ends in _host run on booted Debian containers (tests/hosts): this script starts
# one container per platform of the scenario's molecule.yml (one bridge per scenario), points molecule
# at them (SKDY_ADDR_<platform>, and SKDY_HOST_ADDRESS for the first; SKDY_SSH_KEY, SKDY_RUN_DIR), and
# removes them afterwards, also when molecule fails or the script is interrupted. The role never touches this machine then.
# tengine_dyups (localhost, supervisor) converges THIS machine; it runs only when named. demo_host is no
# molecule scenario: the demo, its cleanup and the watcher's teardown on a container of its own, under
# supervisor (tests/hosts/demo_check.py --short); it runs only when named, like tests/run.sh's demo stage (the
# full form), both outside the default run: beside the four scenarios it pushed CI past 30 minutes on 2 cores.
#
# Debian suites: each _host scenario has its own (suite_of below): nginx_host on Debian 13 (trixie), the others
# on Debian 12 (bookworm), so that every run, CI's too, converges both platforms meta/main.yml names (the one
# whose packages matter most on trixie: Debian's own nginx and Lua module). SKDY_SUITE=bookworm|trixie runs
# every scenario named on that suite instead, e.g. `SKDY_SUITE=trixie tests/tools/molecule.sh tengine_host`.
# A trixie run's package cache is a group of its own (<scenario>-trixie), so that a bookworm run of the same
# scenario beside it keeps its proxy to itself.
#
# Needs root, tests/tools/install-system-deps.sh and tests/tools/venv.sh done, ../shared/tengine
# beside the checkout (or TENGINE_TARBALL, or SKDY_TENGINE_TARBALL). Logs end up in tests/output/molecule/.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
host_scenarios=(tengine_host nginx_host supervisor_host fleet_host)
[ -x .venv/bin/molecule ] || { echo "no .venv/bin/molecule: run tests/tools/venv.sh first" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "the scenarios start containers and services: run it as root" >&2; exit 2; }
export PATH="$root/.venv/bin:$PATH"
ANSIBLE_COLLECTIONS_PATH=$(.venv/bin/python -c \
  'from tests.support.collection import ensure_importable; print(ensure_importable())')
export ANSIBLE_COLLECTIONS_PATH
export ANSIBLE_HOME="$root/.cache/ansible-home"
# A copy molecule's prerun once installed there would shadow the checkout: the checkout it is.
rm -rf "$ANSIBLE_HOME/collections/ansible_collections/swallowkeeper/dyups"
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0 ANSIBLE_NOCOLOR=1
export SKDY_TENGINE_TARBALL=${SKDY_TENGINE_TARBALL:-${TENGINE_TARBALL:-$(cd "$root/.." && pwd)/shared/tengine/tengine-3.2.0.tar.gz}}
CONSUL_BIN=${CONSUL_BIN:-$(tests/tools/get-consul.sh)}
export CONSUL_BIN
mkdir -p tests/output/molecule

scenarios=()
command="test"
extra=()
if [ $# -gt 0 ]; then scenarios=("$1"); command=${2:-test}; extra=("${@:3}"); else scenarios=("${host_scenarios[@]}"); fi

suite_of() {  # the Debian suite a _host scenario runs on: SKDY_SUITE when set, otherwise the scenario's own
  if [ -n "${SKDY_SUITE:-}" ]; then echo "$SKDY_SUITE"; return; fi
  case "$1" in
    nginx_host) echo trixie ;;
    *) echo bookworm ;;
  esac
}

hosts() { SKDY_OWNER_PID=$$ .venv/bin/python -m tests.hosts "$@"; }
hosts cleanup --stale  # containers a killed earlier run left behind
current_run=""
undo() {  # remove the current run's container (molecule test, or a failure while starting it)
  if [ -n "$current_run" ]; then hosts down "$current_run" || true; current_run=""; fi
}
trap undo EXIT
trap 'undo; exit 130' INT
trap 'undo; exit 143' TERM

run_localhost() {  # the old scenario: THIS machine, supervisor
  local scenario=$1 run_dir=/var/tmp/swallowkeeper-molecule status=0
  if [ "$command" = test ] && [ -d "$run_dir" ]; then molecule cleanup -s "$scenario" || true; fi
  molecule "$command" -s "$scenario" "${extra[@]}" || status=$?
  if [ "$command" = test ] && [ -d "$run_dir" ]; then molecule cleanup -s "$scenario" || status=1; fi
  return $status
}

platforms() {  # the platform names of a scenario's molecule.yml, one line, space-separated
  .venv/bin/python - "extensions/molecule/$1/molecule.yml" <<'PY'
import sys
import yaml
with open(sys.argv[1], encoding="utf-8") as stream:
    print(" ".join(platform["name"] for platform in yaml.safe_load(stream)["platforms"]))
PY
}

run_on_host() {
  local scenario=$1 status=0 run=${SKDY_RUN:-}
  local suite
  suite=$(suite_of "$scenario")
  local SKDY_SUITE=$suite
  export SKDY_SUITE  # this function's own: tests.hosts builds and starts containers of this suite
  echo "molecule: $scenario on Debian $SKDY_SUITE"
  [ -f "$SKDY_TENGINE_TARBALL" ] || { echo "molecule: no Tengine tarball at $SKDY_TENGINE_TARBALL" >&2; return 2; }
  if [ -z "$run" ] || [ ! -f "/var/tmp/swallowkeeper-dyups-hosts/$run/state.json" ]; then
    local suffix=""
    [ "$SKDY_SUITE" = bookworm ] || suffix=-$SKDY_SUITE
    run=${run:-$scenario$suffix-$(date -u +%H%M%S)-$$}
    [ "$command" = test ] && current_run=$run
    local start=$SECONDS
    export SKDY_APT_CACHE_GROUP=$scenario$suffix  # scenarios (and suites) side by side: one package cache each
    local names
    read -r -a names < <(platforms "$scenario")
    if [ "$command" = test ]; then hosts up "$run" "${names[@]}" >/dev/null
    else SKDY_OWNER_PID=0 .venv/bin/python -m tests.hosts up "$run" "${names[@]}" >/dev/null; fi
    echo "molecule: test hosts of $scenario (${names[*]}) up in $((SECONDS - start))s (run $run)"
    molecule reset -s "$scenario" >/dev/null 2>&1 || true  # a new host: molecule's state starts afresh
  fi
  local key value
  while IFS='=' read -r key value; do export "$key=$value"; done < <(.venv/bin/python - "$run" <<'PY'
import sys
from tests.hosts.state import load
state = load(sys.argv[1])
for entry in state["containers"]:
    print(f"SKDY_ADDR_{entry['name']}={entry['address']}")
print(f"SKDY_HOST_ADDRESS={state['containers'][0]['address']}")
print(f"SKDY_SSH_KEY={state['ssh_key']}")
PY
)
  export SKDY_RUN=$run SKDY_RUN_DIR=/var/tmp/swallowkeeper-dyups-hosts/$run
  molecule "$command" -s "$scenario" "${extra[@]}" || status=$?
  if [ "$command" = test ]; then
    local name log
    for name in $(platforms "$scenario"); do  # the journals, for a failure's post-mortem
      log=tests/output/molecule/$scenario.journal.log
      [ "$name" = instance ] || log=tests/output/molecule/$scenario.$name.journal.log
      hosts ssh "$run" "$name" journalctl --no-pager -b -o short-iso > "$log" 2>&1 || true
    done
    undo
  else
    echo "molecule: the test host stays up: SKDY_RUN=$run; remove it with python -m tests.hosts down $run"
  fi
  return $status
}

run_one() {
  local scenario=$1 start=$SECONDS rc=0
  case "$scenario" in
    # Not a molecule scenario: the demo and its cleanup on a container of its own (tests/hosts/demo_check.py;
    # its short form here, the full one is tests/run.sh's demo stage).
    demo_host) .venv/bin/python -m tests.hosts.demo_check --short || rc=$? ;;
    *_host) run_on_host "$scenario" || rc=$? ;;
    *) run_localhost "$scenario" || rc=$? ;;
  esac
  echo "molecule $command -s $scenario: exit $rc after $((SECONDS - start))s"
  return $rc
}

status=0
if [ ${#scenarios[@]} -gt 1 ] && [ "${SKDY_PARALLEL:-1}" = 1 ]; then
  # The host scenarios side by side, each on its own container and with its own log (printed when it
  # ends): most of a scenario is waiting on ssh round trips, so two cores carry three of them.
  pids=()
  for scenario in "${scenarios[@]}"; do
    # A background subshell does not inherit the traps: each sets its own, so that it removes its
    # own container when it ends or is told to stop; this shell passes INT/TERM on to them.
    (trap undo EXIT; trap 'undo; exit 130' INT; trap 'undo; exit 143' TERM; run_one "$scenario") \
      > "tests/output/molecule/$scenario.log" 2>&1 &
    pids+=($!)
  done
  trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait; exit 130' INT
  trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait; exit 143' TERM
  for i in "${!scenarios[@]}"; do
    rc=0; wait "${pids[$i]}" || rc=$?
    echo "=== molecule ${scenarios[$i]} (log: tests/output/molecule/${scenarios[$i]}.log)"
    cat "tests/output/molecule/${scenarios[$i]}.log"
    if [ $rc -ne 0 ]; then
      status=1
      # one line per failed task (its name and message), so that a summary of FAILED lines names the task
      .venv/bin/python tests/tools/ansible_failures.py "${scenarios[$i]}" "tests/output/molecule/${scenarios[$i]}.log" || true
    fi
  done
else
  for scenario in "${scenarios[@]}"; do run_one "$scenario" || status=1; done
fi
exit $status
