#!/usr/bin/env bash
# ansible-test sanity for swallowkeeper.dyups, without Docker: the collection's files are copied into
# a temporary ansible_collections/swallowkeeper/dyups tree (ansible-test needs that layout) and
# `ansible-test sanity --venv --python 3.11` runs there. Ignore files (tests/sanity/ignore-*.txt)
# are empty on purpose: fix what a test reports instead of ignoring it.
#
#   tests/tools/sanity.sh                 every sanity test
#   tests/tools/sanity.sh --test pep8     extra arguments go to ansible-test sanity
#
# --venv builds one virtual environment per test under ~/.ansible/test/venv (pip takes the machine's
# own index settings); later runs reuse them. Files copied: what git tracks plus new files not
# ignored (a clean clone: what git tracks).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
python=${SANITY_PYTHON:-3.11}
ansible_test="$root/.venv/bin/ansible-test"
[ -x "$ansible_test" ] || { echo "no $ansible_test: run tests/tools/venv.sh first" >&2; exit 2; }

# ansible-test --venv downloads get-pip.py from its CI file server; this project's test machines reach
# package registries only, so a stand-in that uses Python's bundled pip takes its place in ansible-test's
# cache. The stand-in is a checkout-only workaround (left out of the built collection): without it,
# ansible-test downloads get-pip.py as usual.
stand_in="$root/tests/tools/ansible_test_get_pip.py"
if [ -f "$stand_in" ]; then
  pip_version=$("$root/.venv/bin/python" -c 'import types
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(types.SimpleNamespace(version="'"$python"'"))["pip"])')
  get_pip="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
  mkdir -p "$(dirname "$get_pip")"
  sed "s|@OUTER_PYTHON@|$root/.venv/bin/python|" "$stand_in" > "$get_pip.$$"
  mv "$get_pip.$$" "$get_pip"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/dyups-sanity.XXXXXX")
trap 'rm -rf "$work"' EXIT
dest="$work/ansible_collections/swallowkeeper/dyups"
mkdir -p "$dest"
cd "$root"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' file; do [ -e "$file" ] && printf '%s\0' "$file"; done |
    tar -c --null -T - -f - | tar -x -C "$dest"
else
  tar -c --exclude=.venv --exclude=.cache --exclude=.git --exclude=tests/output --exclude=__pycache__ -f - . |
    tar -x -C "$dest"
fi
cd "$dest"
# ansible-test lists a collection's files through git when it is a repository; give it one
git init -q && git add -A && git -c user.name=sanity -c user.email=sanity@localhost commit -qm sanity
export PATH="$root/.venv/bin:$PATH"
echo "ansible-test sanity in $dest ($("$ansible_test" --version))"
"$ansible_test" sanity --venv --python "$python" --color no "$@"
