#!/usr/bin/env bash
# ansible-lint (production profile, configuration in .ansible-lint) over the whole collection: playbooks,
# roles, meta/runtime.yml, galaxy.yml, changelogs; mypy over plugins/module_utils and plugins/watcher
# (configuration in tests/mypy.ini); the shell-pipe check. Passes only with no violation at all.
#
#   tests/tools/lint.sh                 everything
#   tests/tools/lint.sh playbooks/      extra arguments go to ansible-lint
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
lint="$root/.venv/bin/ansible-lint"
[ -x "$lint" ] || { echo "no $lint: run tests/tools/venv.sh first" >&2; exit 2; }
cd "$root"
export PATH="$root/.venv/bin:$PATH"
# The collection is found through the same symlink the tests use; ansible-lint's own cache stays in .cache.
ANSIBLE_COLLECTIONS_PATH=$("$root/.venv/bin/python" -c \
  'from tests.support.collection import ensure_importable; print(ensure_importable())')
export ANSIBLE_COLLECTIONS_PATH
export ANSIBLE_HOME="$root/.cache/ansible-lint-home"  # its own: lint runs beside molecule (tests/run.sh)
version=$("$lint" --version)  # captured whole, then cut: a pipe into head can fail by chance under pipefail
echo "${version%%$'\n'*}"
# Shell pipelines that can fail by chance under pipefail (file:line of each).
"$root/.venv/bin/python" tests/tools/check-shell-pipes.py
# Type hints of the shared code and the watcher, imported the way Ansible imports them.
MYPYPATH="$ANSIBLE_COLLECTIONS_PATH" "$root/.venv/bin/mypy" --config-file tests/mypy.ini \
  --cache-dir "$root/.cache/mypy" \
  -p ansible_collections.swallowkeeper.dyups.plugins.module_utils \
  -p ansible_collections.swallowkeeper.dyups.plugins.watcher
exec "$lint" --profile production --strict --nocolor "$@"
