# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: the dyups wire format, the one place it is written and read.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Paths, bodies, answers and status codes of Tengine's dyups interface (and of the Lua flavor that copies it).

==========================  ==================================================
``GET /list``               200: a name a line; 204: none
``GET /detail``             200: name, ``server ...`` lines, blank line; 204
``GET /upstream/NAME``      200: ``server ADDR`` lines; 404: unknown
``POST /upstream/NAME``     200 ``success``; 500 (Tengine) or 400 (Lua) refused
``DELETE /upstream/NAME``   200 ``success``; 404: unknown
==========================  ==================================================

Any request may be answered 409 while another worker holds the lock (``dyups_trylock on``).
The order of upstreams in ``/list`` and ``/detail`` is not stable.

What is valid (names, servers, directives) is decided elsewhere (``_names``, ``_servers``,
``_directives``, ``_upstream.build_upstream``); this module only writes and reads the format.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Dict, List

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import validate_name
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import (
    FLAGS, NUMERIC_LIMITS, Server, parse_address)

if TYPE_CHECKING:
    from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream

LIST_PATH = "/list"
DETAIL_PATH = "/detail"
DEFAULT_API_URL = "http://127.0.0.1:18882"
# The shared secret of an interface on TCP (the role's tengine_dyups_api_secret): nginx refuses, 403, a
# request without it. A browser cannot add it to a cross-site request, a proxied request does not carry it.
SECRET_HEADER = "X-Dyups-Secret"
FORBIDDEN = 403

# {upstream name: [Server, ...]}: what a /detail answer holds
Detail = Dict[str, List[Server]]

# -- status codes -------------------------------------------------------------------------------------------
OK = 200                 # done; or the answer follows
EMPTY = 204              # GET /list, /detail: no upstream at all
UNKNOWN = 404            # GET or DELETE /upstream/NAME: the interface does not hold NAME
BUSY = 409               # another worker holds the lock (dyups_trylock on): send again later
REFUSED_LUA = 400        # the Lua flavor refused the body, saying why
REFUSED_TENGINE = 500    # Tengine refused the body (or failed to apply it)

TENGINE_500_ADVICE = (
    "Tengine's documentation says a 500 from the dyups interface can leave nginx needing a reload to return "
    "to a good state; the body was validated before it was sent, so check nginx's error log"
)


def refusal(method: str, url: str, status: int, text: str) -> str | None:
    """What a refusal (400 from the Lua flavor, 500 from Tengine) means, or None for another status."""
    if status == REFUSED_LUA:
        return f"{method} {url} was refused ({status}): {text.strip()}"
    if status == REFUSED_TENGINE:
        return f"{method} {url} answered {status} {text.strip()!r}. {TENGINE_500_ADVICE}"
    return None


def unexpected(method: str, url: str, status: int, text: str) -> str:
    """A status the contract does not give to this request, with what it most likely means."""
    hint = ""
    if status == UNKNOWN:
        hint = " (is dyups_interface configured at this address?)"
    elif status == 405:
        hint = " (the interface does not allow this method)"
    return f"{method} {url} answered {status} {text.strip()[:200]!r}{hint}"


# -- requests -----------------------------------------------------------------------------------------------
def upstream_path(name: str) -> str:
    """``/upstream/NAME`` for a valid name (the name rule makes it URL-safe as it is)."""
    return f"/upstream/{validate_name(name)}"


def post_body(upstream: Upstream) -> str:
    """The POST body for ``/upstream/NAME``: the upstream's statements, one a line (the file's block holds the
    same statements, so a POST never drops what the file keeps)."""
    return "\n".join(upstream.statements()) + "\n"


# -- answers ------------------------------------------------------------------------------------------------
def detail_line(server: Server) -> str:
    """The line Tengine's ``/detail`` prints for ``server``."""
    return (
        f"server {server.address} weight={server.weight} max_conns={server.max_conns} "
        f"max_fails={server.max_fails} fail_timeout={server.fail_timeout} "
        f"backup={int(server.backup)} down={int(server.down)}"
    )


_NUMBER_RE = re.compile(r"-?[0-9]+\Z")


def parse_detail_line(line: str) -> Server:
    """A Server from one ``/detail`` line (``server ADDR weight=2 ... backup=0 down=0``).

    Keys that this version does not know are ignored, so that another Tengine
    build that prints more (or fewer) fields still reads; a line that is not
    ``server ADDR key=value ...`` raises ValidationError.
    """
    words = line.split()
    if len(words) < 2 or words[0] != "server":
        raise ValidationError("/detail line", line, "expected 'server ADDRESS key=value ...'", "detail.line")
    host, port = parse_address(words[1], line)
    values: dict[str, Any] = {}
    for word in words[2:]:
        key, sep, value = word.partition("=")
        if not sep or not _NUMBER_RE.match(value):
            raise ValidationError("/detail line", line, f"expected key=number, got {word!r}", "detail.field")
        number = int(value)
        if key in FLAGS:
            values[key] = number != 0
        elif key in NUMERIC_LIMITS:
            values[key] = number
    return Server(host=host, port=port, **values)


def parse_list(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_detail(text: str) -> Detail:
    """{name: [Server, ...]} from a ``/detail`` answer.

    Names are returned as Tengine holds them, valid or not (someone else may
    have added ``bad name``); callers decide what they manage.
    """
    upstreams: Detail = {}
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


def parse_upstream(text: str) -> list[tuple[str, int]]:
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
