"""Command line of the test-host kit (README.md here).

  python -m tests.hosts up RUN NAME...      start containers NAME... (prints the inventory's path)
  python -m tests.hosts down RUN            stop and remove the run's containers, bridge and proxy
  python -m tests.hosts cleanup [--stale]   remove every run (--stale: those whose owner died)
  python -m tests.hosts ssh RUN NAME [CMD]  a shell or command in a container, over ssh
  python -m tests.hosts link RUN NAME up|down   cut a container off the bridge, or reconnect it
  python -m tests.hosts base-key            the key of the base root filesystem (for caches)

SKDY_SUITE=trixie makes `up` (and `base-key`) use Debian 13 in place of the default, bookworm.
"""

from __future__ import annotations

import os
import signal
import sys

from tests.hosts import base, network, runs
from tests.hosts.errors import HostsError
from tests.hosts.state import load


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through up()'s undo


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    try:
        if command == "up" and len(args) >= 2:
            state = runs.up(args[0], args[1:])
            print(state["inventory"])
        elif command == "down" and len(args) == 1:
            runs.down(args[0])
        elif command == "cleanup" and args in ([], ["--stale"]):
            for name in runs.cleanup(stale_only=bool(args)):
                print(f"removed {name}")
        elif command == "ssh" and len(args) >= 2:
            state = load(args[0])
            entry = next((c for c in state["containers"] if c["name"] == args[1]), None)
            if entry is None:
                raise HostsError(f"run {args[0]} has no container {args[1]}")
            os.execvp("ssh", ["ssh", *runs.ssh_args(state), f"root@{entry['address']}", *args[2:]])
        elif command == "link" and len(args) == 3 and args[2] in ("up", "down"):
            entry = next(c for c in load(args[0])["containers"] if c["name"] == args[1])
            network.link_state(entry["link"], args[2] == "up")
        elif command == "base-key" and not args:
            print(base.key(base.suite_from_env()))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except HostsError as exc:
        print(f"hosts: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
