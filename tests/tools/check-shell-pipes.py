# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Find pipelines whose reader can stop early in the project's shell files (the lint stage runs this).

Under ``set -o pipefail`` a pipeline such as ``consul version | head -1`` fails by chance: when the
reader (``head``, ``grep -q``, ``grep -m``, ``sed 1q``, an ``awk`` that exits ...) has what it wants
and exits, the writer may still be writing, dies of SIGPIPE, and its status 141 becomes the
pipeline's. Capture the output first and cut it afterwards (``out=$(cmd)``; ``sed -n 1p <<<"$out"``),
or use a reader that reads everything (``grep -c``, ``awk 'NR == 1'``, ``sed -n 1p``).

    .venv/bin/python tests/tools/check-shell-pipes.py            every shell file git knows (exit 1 on a finding)
    .venv/bin/python tests/tools/check-shell-pipes.py FILE...    only these files

Shell files: ``*.sh``, and files whose first line is a sh/bash shebang. Each finding is printed as
``file:line: text``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHEBANG = re.compile(r"^#!\s*(/usr/bin/env\s+)?(/bin/|/usr/bin/)?(ba|da)?sh\b")
# A single "|" or "|&" (not "||"), then the reader command and what follows it up to the next pipe.
PIPE = re.compile(r"(?<![|>])\|&?(?!\|)\s*(?P<reader>[^|]*)")
GREP_EARLY = re.compile(r"(^|\s)(-[a-zA-Z]*[qlLm][a-zA-Z0-9]*|--quiet|--silent|--max-count\S*|--files-with(out)?-match\S*)(\s|$)")


def early_reader(reader):
    """Why the pipeline's reader can stop before its writer is done, or None."""
    words = reader.split()
    if not words:
        return None
    command = words[0].rsplit("/", 1)[-1]
    rest = reader[len(words[0]):]
    own = re.split(r"[;&)]", rest, maxsplit=1)[0]  # the reader's own arguments (awk and sed programs hold ;)
    if command == "head":
        return "head stops reading after its lines"
    if command in ("grep", "egrep", "fgrep", "zgrep") and GREP_EARLY.search(own):
        return "grep -q/-m/-l stops reading at the first match"
    if command == "sed" and re.search(r"(^|[;{}\s'\"0-9$/])q\b|\bQ\b", rest):
        return "sed's q command stops reading"
    if command in ("awk", "gawk", "mawk") and re.search(r"\bexit\b", rest):
        return "an awk program that exits stops reading"
    return None


def strip_comment(line):
    """The line without a trailing comment (a # that starts a word, outside quotes)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t;"):
            return line[:index]
    return line


def findings(path, text):
    """(path, line number, reason, line) for every early-stopping pipeline in a shell file's text."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        code = strip_comment(line)
        if not code.strip():
            continue
        for match in PIPE.finditer(code):
            reason = early_reader(match.group("reader"))
            if reason:
                found.append((path, number, reason, line.strip()))
    return found


def is_shell(path):
    if path.suffix == ".sh":
        return True
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            first = handle.readline()
    except OSError:
        return False
    return bool(SHEBANG.match(first))


def project_files():
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return [ROOT / name for name in listed if name and (ROOT / name).is_file()]


def main(argv):
    paths = [Path(arg) for arg in argv] if argv else [path for path in project_files() if is_shell(path)]
    found = []
    for path in paths:
        found.extend(findings(path, path.read_text(encoding="utf-8", errors="replace")))
    for path, number, reason, line in found:
        shown = path.relative_to(ROOT) if path.is_absolute() and ROOT in path.parents else path
        print(f"{shown}:{number}: {reason} (its writer can die of SIGPIPE under pipefail): {line}")
    if found:
        print(f"{len(found)} pipeline(s) can fail by chance: capture the output first, then cut it "
              "(see tests/tools/check-shell-pipes.py)")
        return 1
    print(f"shell pipelines: {len(paths)} files checked, none can be cut off")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
