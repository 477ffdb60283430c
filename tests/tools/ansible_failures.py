"""One line per failed task of an ansible-playbook log (the default callback, YAML results), for a summary
that keeps only the lines saying FAILED: the task's name and what its result said (msg, else the first
lines of the result).

    python tests/tools/ansible_failures.py SCENARIO LOG
"""

from __future__ import annotations

import re
import sys

TASK = re.compile(r"^TASK \[(.*)\] \**$")
FATAL = re.compile(r"^fatal: \[([^\]]*)\]: FAILED! =>(.*)$")
SHOWN = 400


def failures(lines):
    """(host, task, what) for each ``fatal:`` block; ``what`` is the result's msg when it has one."""
    task = "?"
    found = []
    for number, line in enumerate(lines):
        match = TASK.match(line)
        if match:
            task = match.group(1)
            continue
        match = FATAL.match(line)
        if not match:
            continue
        result = [match.group(2).strip()] if match.group(2).strip() else []
        for following in lines[number + 1:]:
            if not following.startswith(" "):
                break
            result.append(following.strip())
        msg = [part for part in result if part.startswith("msg:")]
        what = " ".join(msg[:1] or result[:6])
        found.append((match.group(1), task, what[:SHOWN] + ("..." if len(what) > SHOWN else "")))
    return found


def main(argv):
    scenario, path = argv[1], argv[2]
    with open(path, encoding="utf-8", errors="replace") as stream:
        lines = stream.read().splitlines()
    for host, task, what in failures(lines):
        print(f"FAILED in {scenario}, host {host}, task [{task}]: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
