# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: the dyups wire format, the one place it is written and read.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Paths and answer formats of Tengine's dyups interface (and of the Lua flavor that copies it).

==========================  ==================================================
``GET /list``               200: a name a line; 204: none
``GET /detail``             200: name, ``server ...`` lines, blank line; 204
``GET /upstream/NAME``      200: ``server ADDR`` lines; 404: unknown
``POST /upstream/NAME``     200 ``success``; 500 (Tengine) or 400 (Lua) refused
``DELETE /upstream/NAME``   200 ``success``; 404: unknown
==========================  ==================================================

The order of upstreams in ``/list`` and ``/detail`` is not stable.
"""

from __future__ import annotations

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import validate_name
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import parse_address, parse_detail_line

LIST_PATH = "/list"
DETAIL_PATH = "/detail"
DEFAULT_API_URL = "http://127.0.0.1:18882"


def upstream_path(name):
    """``/upstream/NAME`` for a valid name (the name rule makes it URL-safe as it is)."""
    return f"/upstream/{validate_name(name)}"


def parse_list(text):
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_detail(text):
    """{name: [Server, ...]} from a ``/detail`` answer.

    Names are returned as Tengine holds them, valid or not (someone else may
    have added ``bad name``); callers decide what they manage.
    """
    upstreams = {}
    name = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            name = None
            continue
        if name is not None and line.startswith("server "):
            upstreams[name].append(parse_detail_line(line))
            continue
        if line.startswith("server ") and name is None:
            raise ValidationError("/detail answer", line, "a server line before any upstream name")
        name = line
        upstreams.setdefault(name, [])
    return upstreams


def parse_upstream(text):
    """[(host, port), ...] from a ``GET /upstream/NAME`` answer (``server ADDR`` lines)."""
    addresses = []
    for raw in text.splitlines():
        words = raw.split()
        if not words:
            continue
        if len(words) < 2 or words[0] != "server":
            raise ValidationError("/upstream answer", raw, "expected 'server ADDRESS'")
        addresses.append(parse_address(words[1], raw))
    return addresses
