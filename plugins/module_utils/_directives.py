# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: upstream-level directives, the one place they are checked and rendered.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Upstream-level directives: the lines of an upstream block that are not ``server``.

A POST to dyups replaces the whole upstream, so whatever the upstream file
holds besides servers (``keepalive 32``, ``check ...``) must be sent too, or
Tengine silently drops it. Only directives known to be valid inside an
``upstream`` block are accepted, each with its arguments checked, so that
nothing here can close the block or inject another statement.

Known directives (one of each per upstream). ``hash KEY`` is left out on purpose: on Tengine 3.2 a POST
with ``hash $var`` whose variable the configuration does not already use answers 500 and leaves that
worker refusing every later update until a reload (measured). ASCII only.

=========================  ======================================================
``ip_hash``                balancing method, no arguments
``least_conn``             balancing method, no arguments
``keepalive N``            idle keepalive connections per worker, 1-100000
``keepalive_timeout T``    nginx time (``60s``, ``500ms``)
``keepalive_requests N``   1-100000000
``check k=v ...``          Tengine's upstream check module: interval, rise, fall,
                           timeout, type, default_down, port
``check_http_send "..."``  one double-quoted string
``check_http_expect_alive``  http_2xx http_3xx http_4xx http_5xx
``check_keepalive_requests N``
=========================  ======================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NoReturn

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError

BALANCING = ("ip_hash", "least_conn")
NO_BACKUP = ("ip_hash",)
_DIGITS_RE = re.compile(r"[0-9]{1,9}\Z")
_TIME_RE = re.compile(r"[0-9]{1,9}(ms|s|m|h|d)?\Z")
_QUOTED_RE = re.compile(r'"(?:[^"\\\x00-\x1f\x7f]|\\[rnt"\\])*"\Z')
_CHECK_KEYS = {
    "interval": _DIGITS_RE,
    "rise": _DIGITS_RE,
    "fall": _DIGITS_RE,
    "timeout": _DIGITS_RE,
    "port": _DIGITS_RE,
    "type": re.compile(r"(tcp|http|ssl_hello|mysql|ajp|fastcgi)\Z"),
    "default_down": re.compile(r"(true|false)\Z"),
}
_EXPECT = ("http_2xx", "http_3xx", "http_4xx", "http_5xx")


def _fail(text: object, rule: str, rule_id: str) -> NoReturn:
    raise ValidationError("upstream directive", text, rule, rule_id)


def tokenize(text: str) -> list[str]:
    """Split one directive into words; a double-quoted string is one word (quotes kept)."""
    words = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in " \t":
            i += 1
            continue
        if char == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                _fail(text, "a double quote is not closed", "directive.quote_unclosed")
            words.append(text[i:j + 1])
            i = j + 1
            continue
        j = i
        while j < n and text[j] not in ' \t"':
            j += 1
        words.append(text[i:j])
        i = j
    return words


def _int_in(text: str, value: str, low: int, high: int, what: str) -> None:
    if not _DIGITS_RE.match(value) or not low <= int(value) <= high:
        _fail(text, f"{what} must be a whole number {low}-{high}, not {value!r}", "directive.number")


def _check_args(text: str, name: str, args: tuple[str, ...]) -> None:
    if name in ("ip_hash", "least_conn"):
        if args:
            _fail(text, f"{name} takes no arguments", "directive.args")
    elif name == "keepalive":
        if len(args) != 1:
            _fail(text, "write 'keepalive N'", "directive.args")
        _int_in(text, args[0], 1, 100000, "keepalive")
    elif name == "keepalive_requests":
        if len(args) != 1:
            _fail(text, "write 'keepalive_requests N'", "directive.args")
        _int_in(text, args[0], 1, 100000000, "keepalive_requests")
    elif name == "check_keepalive_requests":
        if len(args) != 1:
            _fail(text, "write 'check_keepalive_requests N'", "directive.args")
        _int_in(text, args[0], 1, 100000000, "check_keepalive_requests")
    elif name == "keepalive_timeout":
        if len(args) != 1 or not _TIME_RE.match(args[0]):
            _fail(text, "write 'keepalive_timeout TIME', like 60s or 500ms", "directive.time")
    elif name == "check":
        seen = set()
        for arg in args:
            key, sep, value = arg.partition("=")
            if key not in _CHECK_KEYS or not sep:
                _fail(text, f"check takes key=value from {', '.join(sorted(_CHECK_KEYS))}, not {arg!r}", "directive.check_key")
            if key in seen:
                _fail(text, f"check: {key} is given twice", "directive.check_twice")
            seen.add(key)
            if not _CHECK_KEYS[key].match(value):
                _fail(text, f"check: {key}={value!r} is not valid", "directive.check_value")
    elif name == "check_http_send":
        if len(args) != 1 or not _QUOTED_RE.match(args[0]):
            _fail(text, 'write check_http_send "REQUEST" with one double-quoted string (escapes: \\r \\n \\t \\" \\\\)', "directive.http_send")
    elif name == "check_http_expect_alive":
        if not args or any(arg not in _EXPECT for arg in args) or len(set(args)) != len(args):
            _fail(text, f"check_http_expect_alive takes one or more of {', '.join(_EXPECT)}", "directive.expect_alive")
    else:
        known = "ip_hash, least_conn, keepalive, keepalive_timeout, keepalive_requests, check, " \
                "check_http_send, check_http_expect_alive, check_keepalive_requests"
        _fail(text, f"unknown upstream directive {name!r}; known: {known} (servers go in 'servers')", "directive.unknown")


@dataclass(frozen=True)
class Directive:
    name: str
    args: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return " ".join((self.name,) + tuple(self.args))

    def line(self) -> str:
        return f"{self.text};"

    @property
    def is_balancing(self) -> bool:
        return self.name in BALANCING


def parse_directive(value: object) -> Directive:
    """A Directive from ``'keepalive 32'`` (a trailing ``;`` is allowed); raises ValidationError."""
    if isinstance(value, Directive):
        return value
    if not isinstance(value, str):
        _fail(value, "a directive is a string like 'keepalive 32'", "directive.type")
    if not value.isascii():  # before strip(): Unicode whitespace at the ends is refused too, like inside
        _fail(value, "only ASCII characters are allowed", "directive.ascii")
    text = value.strip()
    if text.endswith(";"):
        text = text[:-1].rstrip()
    if not text:
        _fail(value, "the directive is empty", "directive.empty")
    if any(ord(char) < 32 and char != "\t" or ord(char) == 127 for char in text):
        _fail(value, "control characters and line breaks are not allowed", "directive.control")
    outside_quotes = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    for char in ";{}#'\\":
        if char in outside_quotes:
            _fail(value, f"{char!r} is not allowed outside double quotes (one directive per entry)", "directive.outside_quotes")
    words = tokenize(text)
    name, args = words[0], tuple(words[1:])
    if name == "server":
        _fail(value, "servers go in 'servers', not in 'directives'", "directive.server")
    _check_args(value, name, args)
    return Directive(name, args)


def parse_directives(values: Any) -> tuple[Directive, ...]:
    """Parse a list of directives: each known directive at most once, one balancing method."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    directives = tuple(parse_directive(value) for value in values)
    names = [directive.name for directive in directives]
    for name in set(names):
        if names.count(name) > 1:
            raise ValidationError("upstream directives", list(values), f"{name} is given more than once", "directives.duplicate")
    balancing = [name for name in names if name in BALANCING]
    if len(balancing) > 1:
        raise ValidationError("upstream directives", list(values),
                              f"only one balancing method per upstream, got {', '.join(balancing)}", "directives.balancing")
    return directives
