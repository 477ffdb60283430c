"""The reload approach (approach B): a re-creation of what consul-template does. A BASELINE only.

This is not part of the collection and not a recommendation: it is what a site runs when it keeps
nginx upstreams in step with Consul by reloading nginx, re-created here (our own code, no
consul-template binary: the machine has none, and only loopback networking) so that the
resilience suite can put the collection's no-reload approach beside it in one run. It follows
consul-template's documented behaviour for a template such as::

    {{ range services }}upstream {{ .Name }} {
      {{ range service .Name }}server {{ .Address }}:{{ .Port }};
      {{ else }}server 127.0.0.1:65535 down;{{ end }}
      keepalive 64;
    }{{ end }}

with ``command = "nginx -s reload"``:

* one blocking query per watched service, ``/v1/health/service/NAME?passing`` with ``index`` and
  ``wait`` (consul-template's ``service`` function returns passing instances only); an answer
  with the same index changes nothing, an index that went backwards resets to 0;
* when any answer changed, the template is rendered again (after ``--wait-min``/``--wait-max``
  quiescence if given, consul-template's ``wait``; unset by default, as in consul-template);
* if the rendered text differs from the file, the file is replaced atomically and the command
  runs (with ``--command-timeout``, 30 s as consul-template's default); identical text runs
  nothing;
* a Consul error is retried with exponential backoff from 250 ms (consul-template's ``retry``
  defaults), capped at 1 minute; consul-template would exit after 12 failed attempts in a row:
  so does this (exit status 12).

``.Address`` is the service address, else the node's. Rendering goes through the collection's
own ``_upstream_file.render`` and ``build_upstream``, so the file is valid nginx syntax; a
service with no passing instance gets the usual ``server 127.0.0.1:65535 down;`` placeholder (an
upstream without servers would make the reload fail).

    .venv/bin/python tests/resilience/reload_approach.py --consul http://127.0.0.1:8500 \
        --services Web,Ws --file /tmp/upstreams.conf --command "nginx -p P -c C -s reload"

Each render and each command is logged (stdout, one line each, with the time).
"""

from __future__ import annotations

import argparse
import http.client
import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.collection import ensure_importable  # noqa: E402

ensure_importable()

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file  # noqa: E402
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream  # noqa: E402

PLACEHOLDER = "127.0.0.1:65535 down"
RETRY_ATTEMPTS = 12


def log(message):
    print(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} {message}", flush=True)


class ServiceWatch(threading.Thread):
    """The blocking query of one service, as consul-template's health.service dependency runs it."""

    def __init__(self, consul, service, wait, changed):
        super().__init__(daemon=True, name=f"watch-{service}")
        parts = urlsplit(consul)
        self.host, self.port = parts.hostname, parts.port or 80
        self.service = service
        self.wait = wait
        self.changed = changed
        self.servers = None      # sorted ["host:port", ...] of passing instances, None before the first answer
        self.failed = 0

    def _get(self, index):
        query = "passing=1" + (f"&index={index}&wait={self.wait}" if index else "")
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.wait_seconds() + 30)
        try:
            connection.request("GET", f"/v1/health/service/{quote(self.service, safe='')}?{query}")
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise OSError(f"HTTP {response.status}")
            return json.loads(body), int(response.getheader("X-Consul-Index", "0"))
        finally:
            connection.close()

    def wait_seconds(self):
        return float(self.wait.rstrip("s"))

    def run(self):
        index = 0
        delay = 0.25
        while True:
            try:
                entries, new_index = self._get(index)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                self.failed += 1
                log(f"consul error ({self.service}, attempt {self.failed}): {exc}")
                if self.failed >= RETRY_ATTEMPTS:
                    log("giving up after 12 attempts, as consul-template does")
                    self.changed(self, fatal=True)
                    return
                time.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            self.failed = 0
            delay = 0.25
            if new_index < index or new_index == 0:
                index = 0
                continue
            if new_index == index:
                continue
            index = new_index
            servers = sorted(f"{(e['Service'].get('Address') or e['Node']['Address'])}:{e['Service']['Port']}"
                             for e in entries)
            if servers != self.servers:
                self.servers = servers
                self.changed(self)


class Renderer:
    def __init__(self, args):
        self.args = args
        self.event = threading.Condition()
        self.dirty = False
        self.fatal = False
        self.watches = [ServiceWatch(args.consul, name, args.wait, self.changed)
                        for name in args.services.split(",")]
        self.renders = 0
        self.reloads = 0

    def changed(self, _watch, fatal=False):
        with self.event:
            self.dirty = True
            self.fatal = self.fatal or fatal
            self.event.notify()

    def text(self):
        upstreams = [build_upstream(watch.service, watch.servers or [PLACEHOLDER], self.args.directives or None)
                     for watch in self.watches]
        return _upstream_file.render(upstreams)

    def render_once(self):
        if any(watch.servers is None for watch in self.watches):
            return  # consul-template renders once every dependency has data
        text = self.text()
        path = Path(self.args.file)
        if path.exists() and path.read_text() == text:
            return
        _upstream_file.replace_file(str(path), text)
        self.renders += 1
        log(f"rendered {path} ({', '.join(f'{w.service}={len(w.servers)}' for w in self.watches)})")
        started = time.monotonic()
        try:
            done = subprocess.run(shlex.split(self.args.command), capture_output=True, text=True,
                                  timeout=self.args.command_timeout, check=False)
            outcome = f"exit {done.returncode}" + (f": {done.stderr.strip()[-300:]}" if done.returncode else "")
        except subprocess.TimeoutExpired:
            outcome = f"timed out after {self.args.command_timeout}s"
        self.reloads += 1
        log(f"command ({time.monotonic() - started:.3f}s) {outcome}")

    def run(self):
        for watch in self.watches:
            watch.start()
        while True:
            with self.event:
                while not self.dirty:
                    self.event.wait()
                if self.fatal:
                    return RETRY_ATTEMPTS
                first = time.monotonic()
                self.dirty = False
                if self.args.wait_min:
                    while True:   # quiescence: wait until quiet for wait_min, at most wait_max from the first change
                        remaining = min(self.args.wait_min, first + self.args.wait_max - time.monotonic())
                        if remaining <= 0 or not self.event.wait(remaining):
                            break
                        self.dirty = False
                self.dirty = False
            self.render_once()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--consul", required=True)
    parser.add_argument("--services", required=True, help="comma-separated service names (one upstream each)")
    parser.add_argument("--file", required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--command-timeout", type=float, default=30.0)
    parser.add_argument("--directive", dest="directives", action="append",
                        help="an upstream-level directive for every upstream (default: keepalive 64)")
    parser.add_argument("--wait", default="60s", help="blocking query wait")
    parser.add_argument("--wait-min", type=float, default=0.0, help="quiescence (consul-template's wait min)")
    parser.add_argument("--wait-max", type=float, default=0.0)
    args = parser.parse_args(argv)
    if args.directives is None:
        args.directives = ["keepalive 64"]
    if args.wait_min and not args.wait_max:
        args.wait_max = 4 * args.wait_min
    log(f"watching {args.services} at {args.consul}; file {args.file}; command {args.command!r}")
    return Renderer(args).run()


if __name__ == "__main__":
    sys.exit(main())
