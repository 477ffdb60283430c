"""Run the real watcher (``python plugins/watcher``) as a process, for integration tests and benchmarks.

    with WatcherProcess(tmp_path, consul_url=agent.url, dyups_url=nginx.api_url,
                        upstream_file=str(tmp_path / "upstreams.conf"), drift_interval=1) as watcher:
        watcher.status()            # GET /status (JSON)
        watcher.metrics()           # {metric line name: value} from GET /metrics
        watcher.wait_for(lambda: ..., "what")   # poll a condition, fail with the log tail
        watcher.hup() / watcher.usr1() / watcher.kill() / watcher.stop()
        watcher.log_text()

Every test backend listens on loopback, which the watcher refuses from Consul by default
(docs/security.md): ``LOOPBACK_OPT_IN`` is in the settings of both helpers unless a test gives its own
``allowed_networks`` / ``allow_host_names`` (None: the watcher's default).

Settings are written to a JSON config file (``watcher.config_path``) so SIGHUP can re-read it:
``watcher.rewrite_config(**changes)``. ``run_once(...)`` runs ``--once`` and returns the
CompletedProcess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.consul import LOOPBACK_OPT_IN
from tests.support.ports import free_port, wait_port
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
ENTRY = ROOT / "plugins" / "watcher"


def opt_in(entry):
    """LOOPBACK_OPT_IN for a watcher that has these settings (an earlier checkout a benchmark runs may not)."""
    package = Path(entry).parent if Path(entry).suffix == ".py" else Path(entry)   # plugins/watcher(/__main__.py)
    return LOOPBACK_OPT_IN if (package.parent / "module_utils" / "_server_policy.py").exists() else {}


def _command(config_path, *extra, entry=ENTRY, python_args=()):
    return [sys.executable, *python_args, str(entry), "--config", str(config_path), *extra]


class WatcherProcess:
    def __init__(self, workdir, entry=ENTRY, python_args=(), **settings):
        """``entry``: the watcher to run (plugins/watcher of this checkout, or of another one: the
        benchmarks compare with an earlier commit); ``python_args``: before it (``-m cProfile -o FILE``)."""
        self.entry = entry
        self.python_args = tuple(python_args)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        defaults = {"status_listen": f"127.0.0.1:{self.port}", "log_level": "debug", "consul_wait": 30,
                    "retry_initial": 0.1, "retry_max": 1.0, **opt_in(entry)}
        defaults.update(settings)
        self.settings = defaults
        self.config_path = self.workdir / f"watcher-{self.port}.json"
        self.log_path = self.workdir / f"watcher-{self.port}.log"
        self.process = None
        self._write_config()

    def _write_config(self):
        tmp = self.config_path.with_suffix(".tmp")
        # a setting given as None is left out: the watcher's default (opt-out of LOOPBACK_OPT_IN)
        tmp.write_text(json.dumps({key: value for key, value in self.settings.items() if value is not None}, indent=1))
        os.replace(tmp, self.config_path)

    def rewrite_config(self, **changes):
        self.settings.update(changes)
        self._write_config()

    def start(self, timeout=20.0, attempts=5):
        """Start the watcher; return once its own status endpoint listens. The port was free when
        free_port() picked it, but another process (a test's nginx, another run beside this one) can take
        it before the watcher binds it: then the watcher exits saying so, and it is started again on a
        new port (the log line naming the port, not just something listening there, says it is ours)."""
        for attempt in range(attempts):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            log = open(self.log_path, "ab")
            self.process = subprocess.Popen(_command(self.config_path, entry=self.entry, python_args=self.python_args),
                                            stdout=log, stderr=subprocess.STDOUT,
                                            cwd=str(ROOT), env=dict(os.environ, PYTHONUNBUFFERED="1"))
            log.close()
            outcome = self._wait_listening(offset, timeout)
            if outcome == "listening":
                return self
            if outcome == "port taken" and attempt + 1 < attempts:
                self._move_to(free_port())
                continue
            self.stop()
            raise RuntimeError(f"the watcher did not start ({outcome}):\n{self.log_text()[-3000:]}")
        raise AssertionError("unreachable")

    def _wait_listening(self, offset, timeout):
        """"listening", "port taken" (it exited: its status port was in use) or why it did not start."""
        ours = self.settings.get("status_listen") == f"127.0.0.1:{self.port}"
        if not ours:   # no status endpoint of the harness's choosing: something listening must do
            try:
                wait_port(self.port, timeout=timeout)
                return "listening"
            except TimeoutError:
                return f"nothing listens on {self.port} after {timeout}s"
        line = f"on http://127.0.0.1:{self.port}/"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()[offset:]
            if line in text:
                wait_port(self.port, timeout=max(0.1, deadline - time.monotonic()))
                return "listening"
            if self.process.poll() is not None:
                return "port taken" if "already in use" in text else f"exited {self.process.returncode}"
            time.sleep(0.02)
        return f"no status endpoint after {timeout}s"

    def _move_to(self, port):
        """The same settings on another status port (new config and log files, named by the port)."""
        self.port = port
        self.settings["status_listen"] = f"127.0.0.1:{port}"
        self.config_path = self.workdir / f"watcher-{port}.json"
        self.log_path = self.workdir / f"watcher-{port}.log"
        self._write_config()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def pid(self):
        return self.process.pid

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def signal(self, signum):
        self.process.send_signal(signum)

    def hup(self):
        self.signal(signal.SIGHUP)

    def usr1(self):
        self.signal(signal.SIGUSR1)

    def kill(self):
        if self.alive():
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self, timeout=15.0):
        if not self.alive():
            return None
        self.process.terminate()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise RuntimeError(f"the watcher ignored SIGTERM for {timeout}s") from None

    def _get(self, path, method="GET"):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                         data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read().decode()

    def status(self):
        return json.loads(self._get("/status"))

    def release(self):
        return self._get("/release", method="POST")

    def metrics(self):
        values = {}
        for line in self._get("/metrics").splitlines():
            if line and not line.startswith("#"):
                name, _sep, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, predicate, what, timeout=10.0, interval=0.02):
        return wait_for(predicate, what, timeout=timeout, interval=interval, tail=self.log_text, tail_name="watcher log")


def run_once(workdir, *extra, timeout=60, entry=ENTRY, **settings):
    """``--once`` (plus ``extra`` flags such as ``--dry-run``) with these settings; CompletedProcess.
    ``entry``: the watcher to run (see WatcherProcess)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    settings.setdefault("status_listen", "")
    for name, value in opt_in(entry).items():
        settings.setdefault(name, value)
    config = workdir / f"once-{time.monotonic_ns()}.json"
    config.write_text(json.dumps(settings))
    return subprocess.run(_command(config, "--once", *extra, entry=entry), capture_output=True, text=True, timeout=timeout,
                          cwd=str(ROOT), check=False)
