#!/usr/bin/env bash
# The README's first command: on a fresh Debian machine, as root, from a checkout of the collection,
# run the end-to-end demo (playbooks/demo.yml): it installs what it needs (Debian packages, the
# project's Python environment in .venv, a Consul binary), then provisions stock nginx + Lua and the
# watcher with the role, and shows traffic following Consul without a reload.
#
#   playbooks/demo.sh                      the demo
#   playbooks/demo.sh -e demo_front_port=28080     extra arguments go to ansible-playbook
#   playbooks/demo.sh --cleanup            stop what the demo started and remove its units or supervisor
#                                          programs (playbooks/demo-cleanup.yml): nothing of it starts again
#   playbooks/demo.sh --flavor tengine [TARBALL]   the same demo on Tengine, built by the role from a
#                                          Tengine source tarball: TARBALL, else $TENGINE_TARBALL (a few
#                                          minutes more; the default stock-nginx demo is the fastest)
#   playbooks/demo.sh --cleanup --flavor tengine   the same for the Tengine demo (it also stops a Tengine
#                                          that no service manager knows any more, through its PID file)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ "$(id -u)" = 0 ] || { echo "demo.sh installs packages and services: run it as root" >&2; exit 2; }
playbook=playbooks/demo.yml
if [ "${1:-}" = --cleanup ]; then playbook=playbooks/demo-cleanup.yml; shift; fi
flavor_args=()
if [ "${1:-}" = --flavor ]; then
  case "${2:-}" in
    nginx) shift 2 ;;
    tengine)
      shift 2
      tarball=${TENGINE_TARBALL:-}
      if [ -n "${1:-}" ] && [ "${1#-}" = "$1" ]; then tarball=$1; shift; fi
      flavor_args=(-e demo_flavor=tengine)
      if [ "$playbook" = playbooks/demo.yml ]; then
        [ -n "$tarball" ] || { echo "--flavor tengine needs a Tengine source tarball: give its path or set TENGINE_TARBALL" >&2; exit 2; }
        [ -f "$tarball" ] || { echo "no such Tengine tarball: $tarball" >&2; exit 2; }
        flavor_args+=(-e "demo_tengine_tarball=$(cd "$(dirname "$tarball")" && pwd)/$(basename "$tarball")")
      fi ;;
    *) echo "--flavor is nginx or tengine, not '${2:-}'" >&2; exit 2 ;;
  esac
fi
tests/tools/install-system-deps.sh
tests/tools/venv.sh
ANSIBLE_COLLECTIONS_PATH=$(.venv/bin/python -c \
  'from tests.support.collection import ensure_importable; print(ensure_importable())')
export ANSIBLE_COLLECTIONS_PATH
export ANSIBLE_HOME="$root/.cache/ansible-home"
# The playbook writes a short plain summary (steps passed or not, the nginx master PID, how to clean up);
# it is printed last, after Ansible's own output, whatever the outcome.
summary=$(mktemp "${TMPDIR:-/tmp}/swallowkeeper-demo-summary.XXXXXX")
trap 'rm -f "$summary"' EXIT
status=0
.venv/bin/ansible-playbook -i localhost, -c local "$playbook" ${flavor_args[@]+"${flavor_args[@]}"} -e "demo_summary_file=$summary" "$@" || status=$?
if [ -s "$summary" ]; then cat "$summary"; fi
if [ "$status" -ne 0 ]; then echo "$playbook FAILED (exit status $status; see above)" >&2; fi
exit "$status"
