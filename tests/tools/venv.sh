#!/usr/bin/env bash
# Build (or refresh) the project's virtual environment in .venv from tests/requirements.txt.
# pip takes its index and mirrors from the machine's own configuration. Re-runs are quick: the
# requirements file's hash is stored and pip runs again only when it changed.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv="$root/.venv"
python=${PYTHON:-python3}
req="$root/tests/requirements.txt"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$req"
  echo "$want" > "$stamp"
fi
version=$("$venv/bin/ansible" --version)  # captured whole, then cut: a pipe into head breaks ansible's output
echo "venv: $venv (${version%%$'\n'*})"
