# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/tools/check-shell-pipes.py: what it reports, what it leaves alone, and the project's shell is clean."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tests" / "tools" / "check-shell-pipes.py"
SPEC = importlib.util.spec_from_file_location("check_shell_pipes", TOOL)
check = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(check)


@pytest.mark.parametrize("line", [
    '"$1" version 2>/dev/null | head -1',
    'x=$(consul version | head -n1)',
    'dpkg-query -W "$p" | grep -q installed || missing+=(x)',
    'ps ax | grep -qx nginx',
    'cat f | grep -m1 foo',
    'cat f | grep --quiet foo',
    'find . | grep -l foo',
    'cmd | sed 1q',
    "cmd | awk '/x/ { print; exit }'",
    'cmd 2>&1 |& head -2',
    'a | sort | /usr/bin/head -1',
])
def test_reports_readers_that_stop_early(line):
    found = check.findings(Path("x.sh"), "#!/bin/bash\nset -o pipefail\n" + line + "\n")
    assert [number for _path, number, _why, _text in found] == [3], found


@pytest.mark.parametrize("line", [
    'out=$(consul version); echo "${out%%$\'\\n\'*}"',
    'cmd | grep -c foo',
    'cmd | grep foo',
    'cmd | sed -n 1p',
    "cmd | awk 'NR == 1'",
    'true || head -1 f',
    'grep -q foo file',
    'echo "a | head"  # quoted',
    '# cmd | head -1 in a comment',
    'cmd | tee log',
])
def test_leaves_full_readers_alone(line):
    assert check.findings(Path("x.sh"), line + "\n") == []


def test_the_project_shell_has_none():
    result = subprocess.run([sys.executable, str(TOOL)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_reports_file_and_line(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nset -euo pipefail\n\nconsul version | head -1\n")
    result = subprocess.run([sys.executable, str(TOOL), str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert f"{bad}:4: head" in result.stdout
