#!/usr/bin/env python3
"""Run nginx/Tengine under supervisor so that supervisor keeps tracking it across a binary upgrade.

    nginx_supervise.py --pid-file PID_FILE [--kill-after SECONDS] -- BINARY ARGS...

Supervisor runs this (the tengine_dyups role's program) instead of nginx. supervisor follows the PID it forked; a
foreground master ("daemon off;") cannot be upgraded (nginx ignores USR2 in a master whose parent is the one it was
started by), and the new master of a binary upgrade is a child of the old one, which supervisor would lose when the
old master quits. So:

- this process becomes a child subreaper (Linux prctl PR_SET_CHILD_SUBREAPER) and starts BINARY ARGS, which
  daemonizes as under systemd (the configuration must not say "daemon off;"): the master, orphaned by the
  process that started it, becomes this process's child; so does the new master of a binary upgrade once the old
  master has quit. Every nginx process it started stays its descendant;
- the current master is the live descendant PID_FILE names (nginx writes it; a binary upgrade renames it to
  PID_FILE.oldbin for the old master);
- HUP, USR1, USR2 and WINCH are passed to the current master; TERM, INT and QUIT (a stop) to every master: the
  current one, PID_FILE.oldbin's while it drains, and any other child. A master that appears while stopping gets
  the same signal. Whatever still runs SECONDS (default 40: under the program's stopwaitsecs) after a stop gets
  KILL, the workers too (nginx daemonizes into a session of its own: supervisor's killasgroup cannot reach it);
- it exits when no process it started is left, with the status of the last master that exited (128 + N for a
  signal N), or of BINARY when it fails to start.

When this process itself is killed with KILL, the masters keep running as orphans (nothing can forward then); a
new start of the program then fails to bind and says so in the error log.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
FORWARDED = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
STOPPING = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def say(text):
    # one write(2), no buffered stream: a signal handler may say something while the loop is saying something
    os.write(2, f"nginx_supervise[{os.getpid()}]: {text}\n".encode(errors="replace"))


def parent_of(pid):
    """The parent PID of PID, or 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            # "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses, the last ")" ends it
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def children(pid):
    """The PIDs whose parent is PID."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and parent_of(name) == pid:
            found.append(int(name))
    return found


def descends(pid, ancestor):
    """Whether PID runs and ANCESTOR is its parent, its parent's parent, ..."""
    seen = 0
    while pid > 1 and seen < 64:
        pid = parent_of(pid)
        if pid == ancestor:
            return True
        seen += 1
    return False


def read_pid(path):
    try:
        with open(path, encoding="ascii") as text:
            return int(text.read().strip())
    except (OSError, ValueError):
        return 0


def status_code(status):
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


class Supervise:
    def __init__(self, pid_file, kill_after):
        self.pid_file = pid_file
        self.kill_after = kill_after
        self.me = os.getpid()
        self.master = 0             # the current master, as last seen
        self.masters = set()        # every master seen, for the exit status
        self.stop_signal = None     # the stop signal received, if any
        self.stop_since = 0.0
        self.stopped = set()        # the masters the stop signal was sent to
        self.status = 0
        self.starter = 0            # the process started (nginx before it daemonizes)

    def current_masters(self):
        """The live masters: PID_FILE's and PID_FILE.oldbin's (if they are descendants), and the direct children."""
        found = [pid for pid in (read_pid(self.pid_file), read_pid(self.pid_file + ".oldbin"))
                 if pid and descends(pid, self.me)]
        return found + [pid for pid in children(self.me) if pid not in found]

    def follow(self):
        pid = read_pid(self.pid_file)
        if pid and pid != self.master and descends(pid, self.me):
            say(f"master {pid} ({'parent ' + str(parent_of(pid)) if parent_of(pid) != self.me else 'own child'})")
            self.master = pid
            self.masters.add(pid)

    def on_signal(self, signum, _frame):
        if signum in STOPPING:
            if self.stop_signal is None:
                self.stop_since = time.monotonic()
            self.stop_signal = signum
            self.stopped.clear()    # a second stop signal is passed on again
            self.pass_stop()
            return
        self.follow()
        # no master in the pid file yet (or a configuration whose "pid" is another file): the processes started
        for pid in [self.master] if self.master and descends(self.master, self.me) else children(self.me):
            self.send(pid, signum)

    def send(self, pid, signum):
        try:
            os.kill(pid, signum)
        except OSError as error:
            say(f"{signal.Signals(signum).name} to {pid}: {error}")

    def pass_stop(self):
        for pid in self.current_masters():
            if pid not in self.stopped:
                self.stopped.add(pid)
                self.masters.add(pid)
                self.send(pid, self.stop_signal)

    def kill_all(self):
        """KILL to every process under this one (a master that did not stop in time, its workers)."""
        pending = children(self.me)
        while pending:
            pid = pending.pop()
            pending.extend(children(pid))
            self.send(pid, signal.SIGKILL)

    def reap(self):
        """Collect the exited children; False when none is left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid in self.masters or pid == self.starter:
                self.status = status_code(status)
                say(f"{'master' if pid in self.masters else 'starter'} {pid} exited ({self.status})")

    def run(self, argv):
        for signum in FORWARDED + STOPPING:
            signal.signal(signum, self.on_signal)
        self.starter = os.fork()
        if self.starter == 0:
            try:
                for signum in FORWARDED + STOPPING:
                    signal.signal(signum, signal.SIG_DFL)
                os.execv(argv[0], argv)
            finally:
                os._exit(127)  # pylint: disable=protected-access
        say(f"started {' '.join(argv)} (pid {self.starter})")
        killed = False
        while self.reap():
            self.follow()
            if self.stop_signal is not None:
                self.pass_stop()
                if not killed and time.monotonic() - self.stop_since > self.kill_after:
                    say(f"still running {self.kill_after}s after {signal.Signals(self.stop_signal).name}: KILL")
                    self.kill_all()
                    killed = True
            time.sleep(0.1)
        say(f"no nginx process left; exit {self.status}")
        return self.status


def main(args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pid-file", required=True)
    parser.add_argument("--kill-after", type=float, default=40.0)
    parser.add_argument("command", nargs="+")
    options = parser.parse_args(args)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        say(f"cannot become a child subreaper (Linux 3.4 or later): {os.strerror(ctypes.get_errno())}")
        return 1
    return Supervise(options.pid_file, options.kill_after).run(options.command)


if __name__ == "__main__":
    sys.exit(main())
