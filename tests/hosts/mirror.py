"""The machine's own Debian mirror, read from its apt sources at run time (never written down).

The first ``deb`` URI whose suite is a plain release name (not -security, -updates, -backports, and
not a third-party suite such as ``nodistro``): deb822 ``*.sources`` files first, then the one-line
format. The same rule as tests/tools/get-consul.sh.
"""

from __future__ import annotations

import glob
import re

SOURCES_D = "/etc/apt/sources.list.d"
SOURCES_LIST = "/etc/apt/sources.list"
RELEASES = {"bookworm", "trixie", "bullseye", "sid", "stable", "testing", "unstable", "oldstable"}


class MirrorError(RuntimeError):
    """No usable Debian mirror in the machine's apt sources."""


def _deb822(text: str):
    for stanza in re.split(r"\n\s*\n", text):
        fields = {}
        for line in stanza.splitlines():
            if line.lstrip().startswith("#") or ":" not in line:
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.split()
        if "deb" in fields.get("types", []) and fields.get("uris"):
            yield fields["uris"][0], fields.get("suites", [])


def _one_line(text: str):
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            yield words[0], [words[1]]


def debian_mirror(suite: str = "bookworm") -> str:
    """The mirror URI (no trailing slash) that serves ``suite`` on this machine."""
    candidates = []
    for path in sorted(glob.glob(f"{SOURCES_D}/*.sources")):
        with open(path, encoding="utf-8") as handle:
            candidates += list(_deb822(handle.read()))
    for path in [SOURCES_LIST] + sorted(glob.glob(f"{SOURCES_D}/*.list")):
        try:
            with open(path, encoding="utf-8") as handle:
                candidates += list(_one_line(handle.read()))
        except FileNotFoundError:
            continue
    for uri, suites in candidates:
        if suite in suites or any(s in RELEASES for s in suites):
            if uri.startswith(("mirror+", "tor+", "cdrom:", "file:")):
                continue
            if uri.split(":", 1)[0] in ("http", "https"):
                return uri.rstrip("/")
    raise MirrorError(
        f"no http(s) Debian mirror for {suite} in {SOURCES_D}/*.sources or {SOURCES_LIST}: "
        "the test hosts get their packages through the machine's own mirror")
