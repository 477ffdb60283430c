#!/usr/bin/env bash
# The README's first command: on a fresh Debian machine, as root, from a checkout of the collection,
# run the end-to-end demo (playbooks/demo.yml): it installs what it needs (Debian packages, the
# project's Python environment in .venv, a Consul binary), then provisions stock nginx + Lua and the
# watcher with the role, and shows traffic following Consul without a reload.
#
#   playbooks/demo.sh                      the demo
#   playbooks/demo.sh -e demo_front_port=28080     extra arguments go to ansible-playbook
#   playbooks/demo.sh --cleanup            stop what the demo started (playbooks/demo-cleanup.yml)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ "$(id -u)" = 0 ] || { echo "demo.sh installs packages and services: run it as root" >&2; exit 2; }
playbook=playbooks/demo.yml
if [ "${1:-}" = --cleanup ]; then playbook=playbooks/demo-cleanup.yml; shift; fi
tests/tools/install-system-deps.sh
tests/tools/venv.sh
ANSIBLE_COLLECTIONS_PATH=$(.venv/bin/python -c \
  'from tests.support.collection import ensure_importable; print(ensure_importable())')
export ANSIBLE_COLLECTIONS_PATH
export ANSIBLE_HOME="$root/.cache/ansible-home"
exec .venv/bin/ansible-playbook -i localhost, -c local "$playbook" "$@"
