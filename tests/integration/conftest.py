"""Fixtures shared by the integration tests: a dyups server speaking the wire contract.

``dyups_server`` is the real target, the stock-nginx Lua flavor started by
``tests/support/nginx_lua.py`` (nginx with libnginx-mod-http-lua, on loopback), when that helper
exists and nginx starts; otherwise the stand-in ``tests/support/fake_dyups.py``. Tests that need
what only the stand-in does (409 on demand, Tengine's 500, a record of every request) take
``fake_dyups`` instead. Both have ``api_url``; each test gets a fresh, empty server.
"""

from __future__ import annotations

import importlib
import warnings

import pytest

from tests.support.fake_dyups import FakeDyups


def _nginx_lua_factory():
    """A context-manager factory for the Lua flavor, or None when its helper is not there."""
    try:
        nginx_lua = importlib.import_module("tests.support.nginx_lua")
    except ImportError:
        return None
    for name in ("NginxLua", "NginxLuaServer", "NginxDyups"):
        factory = getattr(nginx_lua, name, None)
        if factory is not None:
            return factory
    return None


@pytest.fixture
def fake_dyups():
    with FakeDyups() as server:
        yield server


@pytest.fixture
def dyups_server(tmp_path):
    factory = _nginx_lua_factory()
    if factory is not None:
        try:
            server = factory(tmp_path / "nginx")
            server.__enter__()
        except Exception as exc:  # the Lua flavor cannot start here: say so, and use the stand-in
            warnings.warn(f"the nginx Lua flavor did not start ({exc}); using the stand-in fake_dyups", stacklevel=1)
        else:
            try:
                yield server
            finally:
                server.__exit__(None, None, None)
            return
    with FakeDyups() as server:
        yield server
