"""Fixtures shared by the integration tests: a dyups server speaking the wire contract.

``dyups_server`` is a real target, once per flavor (``[lua]`` / ``[tengine]`` in the test id): the
stock-nginx Lua flavor started by ``tests/support/nginx_lua.py`` (nginx with libnginx-mod-http-lua, on
loopback; the stand-in ``tests/support/fake_dyups.py`` when it cannot start), and a real Tengine from
``$TENGINE_BIN`` (``tests/support/tengine.py``; skipped without one, failed under ``CI=true``). Tests that need
what only the stand-in does (409 on demand, Tengine's 500, a record of every request) take
``fake_dyups`` instead. Both have ``api_url``; each test gets a fresh, empty server.
"""

from __future__ import annotations

import importlib
import warnings

import pytest

from tests.support.fake_dyups import FakeDyups
from tests.support.tengine import FLAVORS, Tengine, require_tengine


def _nginx_lua_class():
    """The Lua flavor's NginxLua class, or None when its helper is not there."""
    try:
        return importlib.import_module("tests.support.nginx_lua").NginxLua
    except (ImportError, AttributeError):
        return None


@pytest.fixture
def fake_dyups():
    with FakeDyups() as server:
        yield server


@pytest.fixture(params=FLAVORS)
def dyups_server(request):
    if request.param == "tengine":
        require_tengine()
        with Tengine(workers=1) as server:
            yield server
        return
    nginx_lua = _nginx_lua_class()
    if nginx_lua is not None:
        server = nginx_lua(workers=1)
        try:
            server.start()
        except Exception as exc:  # the Lua flavor cannot start here: say so, and use the stand-in
            server.cleanup()
            warnings.warn(f"the nginx Lua flavor did not start ({exc}); using the stand-in fake_dyups", stacklevel=1)
        else:
            try:
                yield server
            finally:
                server.cleanup()
            return
    with FakeDyups() as server:
        yield server


GUARD_SECRET = "guarded-interface-secret-0123456789"


@pytest.fixture(params=FLAVORS)
def guarded_dyups_server(request, tmp_path):
    """A real interface of each flavor guarded as the role's is by default (a request without
    ``X-Dyups-Secret`` refused, 403); ``secret_file``: a file holding its secret. No stand-in."""
    secret_file = tmp_path / "dyups.secret"
    secret_file.write_text(GUARD_SECRET + "\n")
    secret_file.chmod(0o600)
    if request.param == "tengine":
        require_tengine()
        server = Tengine(workers=1, api_secret=GUARD_SECRET)
    else:
        server = importlib.import_module("tests.support.nginx_lua").NginxLua(workers=1, api_secret=GUARD_SECRET)
    with server:
        server.secret_file = str(secret_file)
        yield server
