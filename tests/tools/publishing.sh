#!/usr/bin/env bash
# What publishing the collection needs, checked without publishing anything (tests/run.sh runs it in the
# sanity stage):
#   1. antsibull-docs lint-collection-docs --plugin-docs: every module's documentation and the role's argument
#      specs are valid for the docs site;
#   2. the docs site built by antsibull-docs (sphinx-init, then its collection RST and sphinx-build to HTML in
#      tests/output/docsite/html): any Sphinx warning fails, except the references to Ansible's own
#      documentation that the generated pages make through intersphinx (no network here to resolve them);
#   3. meta/execution-environment.yml read by `ansible-builder introspect`, as an execution-environment build
#      (AWX / Automation Platform) reads it: the files it names exist, and it asks for no Python or system
#      package (the collection needs nothing beyond ansible-core on the controller).
# The tools live in their own virtual environment, .cache/publishing-venv (tests/tools/publishing-requirements.txt;
# pip takes the machine's own index settings), so they never change the test environment in .venv.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
venv="$root/.cache/publishing-venv"
req="$root/tests/tools/publishing-requirements.txt"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$req"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
# The checkout as ansible_collections/swallowkeeper/dyups (tests/support/collection.py: one link per checkout).
ANSIBLE_COLLECTIONS_PATH=$("$venv/bin/python" -c 'import sys; sys.path.insert(0, "'"$root"'")
from tests.support.collection import ensure_importable; print(ensure_importable())')
export ANSIBLE_COLLECTIONS_PATH ANSIBLE_NOCOLOR=1
collection="$ANSIBLE_COLLECTIONS_PATH/ansible_collections/swallowkeeper/dyups"

echo "publishing: 1. antsibull-docs lint-collection-docs ($(antsibull-docs --version))"
antsibull-docs lint-collection-docs --plugin-docs "$collection"

echo "publishing: 2. the docs site (antsibull-docs + sphinx-build)"
work=$(mktemp -d "${TMPDIR:-/tmp}/dyups-docsite.XXXXXX")
trap 'rm -rf "$work"' EXIT
antsibull-docs sphinx-init --use-current --dest-dir "$work" swallowkeeper.dyups > "$work/init.log"
mkdir -p "$work/rst"
chmod og-w "$work/rst"  # antsibull-docs wants the directory writable by itself only
antsibull-docs --config-file "$work/antsibull-docs.cfg" collection --cleanup everything --use-current \
  --dest-dir "$work/rst" swallowkeeper.dyups
out="$root/tests/output/docsite"
rm -rf "$out"
mkdir -p "$out"
sphinx_rc=0
(cd "$work" && sphinx-build -M html rst "$out" -c . --keep-going) > "$out/sphinx.log" 2>&1 || sphinx_rc=$?
# Warnings Sphinx may give here and only here: intersphinx cannot reach docs.ansible.com, so the labels that
# the generated pages take from Ansible's own documentation stay unresolved.
unexpected=$(grep -E 'WARNING|ERROR' "$out/sphinx.log" \
  | grep -Ev 'failed to reach any of the inventories|undefined label: .(ansible_configuration_settings|common_return_values). ' \
  || true)
pages=$(find "$out/html" -name '*.html' | wc -l)
if [ "$sphinx_rc" -ne 0 ] || [ -n "$unexpected" ] || [ ! -f "$out/html/collections/swallowkeeper/dyups/dyups_upstream_module.html" ]; then
  echo "publishing: the docs site FAILED (sphinx-build exit $sphinx_rc):"
  printf '%s\n' "$unexpected"
  tail -n 20 "$out/sphinx.log"
  exit 1
fi
echo "publishing: docs site built, $pages pages in $out/html"

echo "publishing: 3. meta/execution-environment.yml (ansible-builder introspect)"
introspect=$(ansible-builder introspect "$ANSIBLE_COLLECTIONS_PATH" 2>&1) || { printf '%s\n' "$introspect"; exit 1; }
printf '%s\n' "$introspect"
# An empty dependency list is what the file promises; anything else (or a file it names missing) fails.
case "$introspect" in
  *"python: []"*"system: []"*) echo "publishing: the execution environment needs nothing beyond ansible-core" ;;
  *) echo "publishing: meta/execution-environment.yml asks for more than its comment says"; exit 1 ;;
esac
