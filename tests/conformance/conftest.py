"""The targets of the dyups conformance suite: ``$DYUPS_URL``, or both flavors started here.

    DYUPS_URL=http://127.0.0.1:18882 .venv/bin/python -m pytest tests/conformance   # your Tengine
    .venv/bin/python -m pytest tests/conformance    # a real Tengine ($TENGINE_BIN) and the Lua flavor

Without ``DYUPS_URL`` every row runs twice, ``[lua]`` and ``[tengine]`` in its test id: against the
Lua flavor and against a real Tengine from ``$TENGINE_BIN`` (tests/support/tengine.py; tests/run.sh
builds one with tests/tools/get-tengine.sh). Without a Tengine binary the ``[tengine]`` rows are
skipped, saying so (failed under ``CI=true``). Against the Tengine started here the rows are strict:
Tengine's own answers (500 ``add server failed``, 200 for ``ip_hash``) are required, not merely allowed.

Against ``$DYUPS_URL`` the suite only adds and deletes upstreams whose names start with
``skconf`` (and the few invalid names of the "names Tengine accepts" rows, deleted again at
once); it never touches other upstreams. Rows that need control of the server process (reload,
upstreams in the configuration) run only against the servers the suite starts itself.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import quote, urlsplit

import pytest

from tests.support.nginx_lua import http_request
from tests.support.tengine import FLAVORS, flavor_class

PREFIX = "skconf"


class Target:
    """The interface under test: raw HTTP, the collection's client, and what kind of server it is."""

    def __init__(self, url, nginx=None, flavor="external"):
        self.url = url.rstrip("/")
        self.flavor = flavor
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise pytest.UsageError(f"DYUPS_URL must be http://HOST:PORT, not {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.nginx = nginx

    @property
    def external(self):
        """True for $DYUPS_URL (Tengine, or anything else), False for a server started here."""
        return self.nginx is None

    @property
    def lua(self):
        """True for the Lua flavor started here (its deliberate differences apply)."""
        return self.flavor == "lua"

    @property
    def tengine(self):
        """True for the real Tengine started here (Tengine's exact answers are required)."""
        return self.flavor == "tengine"

    def raw(self, method, path, body=None, headers=None):
        """(status, text, headers) of one request on a new connection; the path is sent as given."""
        return http_request(self.port, method, path, body, headers, timeout=10, host=self.host)

    def client(self):
        from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient
        from tests.support.http_stdlib import stdlib_transport
        return DyupsClient(self.url, stdlib_transport, timeout=10)


TARGETS = ("external",) if os.environ.get("DYUPS_URL") else FLAVORS


@pytest.fixture(scope="session", params=TARGETS)
def target(request):
    if request.param == "external":
        yield Target(os.environ["DYUPS_URL"])
        return
    nginx = flavor_class(request.param)(workers=2)
    try:
        nginx.start()
        yield Target(nginx.api_url, nginx, request.param)
    finally:
        nginx.cleanup()


@pytest.fixture
def names(target):
    """``names()`` -> a fresh upstream name of this suite; every upstream named so is deleted after the test."""
    made = []

    def new(suffix=""):
        name = f"{PREFIX}{uuid.uuid4().hex[:10]}{suffix}"
        made.append(name)
        return name

    yield new
    for name in made:
        target.raw("DELETE", f"/upstream/{quote(name)}")


def assert_refused(target, status, text, reason_words=()):
    """Tengine refuses a body with 500 "add server failed"; the Lua flavor with 400 and its reason."""
    if target.tengine:
        assert (status, text) == (500, "add server failed"), (status, text)
    elif target.external:
        assert status in (400, 500), (status, text)
        if status == 500:
            assert text.strip() == "add server failed", text
        else:
            assert text.strip(), "a 400 must say why"
    else:
        assert status == 400, (status, text)
        lowered = text.lower()
        for word in reason_words:
            assert word.lower() in lowered, (word, text)
