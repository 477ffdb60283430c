"""The test hosts' Debian suite (tests/hosts, issue 21 item 7): SKDY_SUITE picks bookworm (the default,
what CI runs) or trixie, and the base root filesystem's cache key and path follow it. Runs the kit's
command line as a user does; nothing here starts a container."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hosts import base
from tests.hosts.errors import HostsError

ROOT = Path(__file__).resolve().parents[2]


def _base_key(suite: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SKDY_SUITE"}
    if suite is not None:
        env["SKDY_SUITE"] = suite
    return subprocess.run([sys.executable, "-m", "tests.hosts", "base-key"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_base_key_and_path_name_the_suite():
    assert base.key("trixie") != base.key("bookworm")
    assert base.path("trixie").name.startswith("base-trixie-")
    assert base.path("bookworm").name.startswith("base-bookworm-")


def test_skdy_suite_picks_the_base_of_debian_13():
    done = _base_key("trixie")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == base.key("trixie")


def test_without_skdy_suite_the_base_stays_bookworm():
    for value in (None, ""):
        done = _base_key(value)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == base.key("bookworm")


def test_an_unknown_suite_is_refused(monkeypatch):
    monkeypatch.setenv("SKDY_SUITE", "buster")
    with pytest.raises(HostsError, match="SKDY_SUITE must be one of bookworm, trixie"):
        base.suite_from_env()
    done = _base_key("buster")
    assert done.returncode == 1
    assert "SKDY_SUITE must be one of" in done.stderr
