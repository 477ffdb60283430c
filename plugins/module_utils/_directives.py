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
``keepalive_timeout T``    nginx time (``60s``, ``500ms``, ``1m``), at most 2147483647 ms
``keepalive_requests N``   1-100000000
``check k=v ...``          Tengine's upstream check module: interval, rise, fall,
                           timeout (1-999999999), port (1-65535), type,
                           default_down (true, false)
``check_http_send "..."``  one double-quoted string; needs ``check`` with
                           ``type=http`` in the same upstream
``check_http_expect_alive``  http_1xx http_2xx http_3xx http_4xx http_5xx
``check_keepalive_requests N``  1-100000000
=========================  ======================================================

The ``check*`` bounds are Tengine 3.2.0's (``modules/ngx_http_upstream_check_module``,
``ngx_http_upstream_check``): interval, timeout, rise, fall and port of 0 are refused there ("invalid
parameter"), ``check_http_send`` before ``check`` or with a type other than http is refused
("should set [check] first", "invalid check_http_send for type"), ``check_keepalive_requests 0`` is
"invalid value". A port above 65535 is accepted there and truncated to 16 bits: refused here.

Equivalent spellings have one form (``Directive.text``), so they compare equal and cost no POST or
file rewrite: numbers without leading zeros, a time in ``s`` when it is whole seconds (``1m`` ->
``60s``, ``60`` -> ``60s``, ``1000ms`` -> ``1s``) else in ``ms``, ``check`` arguments in the order of
the table (interval rise fall timeout type default_down port), ``check_http_expect_alive`` values
sorted; ``parse_directives`` orders directives by the table too (``check`` before the directives that
need it), the balancing method first.
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
_CHECK_NUMBERS = {"interval": 999999999, "rise": 999999999, "fall": 999999999, "timeout": 999999999,
                  "port": 65535}   # each 1 to this (Tengine refuses 0)
_CHECK_WORDS = {
    "type": re.compile(r"(tcp|http|ssl_hello|mysql|ajp|fastcgi)\Z"),
    "default_down": re.compile(r"(true|false)\Z"),
}
_CHECK_ORDER = ("interval", "rise", "fall", "timeout", "type", "default_down", "port")
_CHECK_KEYS = frozenset(_CHECK_ORDER)
_EXPECT = ("http_1xx", "http_2xx", "http_3xx", "http_4xx", "http_5xx")
_TIME_MS = {"ms": 1, "": 1000, "s": 1000, "m": 60000, "h": 3600000, "d": 86400000}
MAX_TIME_MS = 2147483647
# The order of directives in an upstream after its balancing method: check before what needs it.
ORDER = ("keepalive", "keepalive_timeout", "keepalive_requests", "check", "check_http_send",
         "check_http_expect_alive", "check_keepalive_requests")


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


_COUNTS = {"keepalive": 100000, "keepalive_requests": 100000000, "check_keepalive_requests": 100000000}


def _int_in(text: str, value: str, low: int, high: int, what: str) -> str:
    """``value`` without leading zeros when it is a whole number ``low``-``high``."""
    if not _DIGITS_RE.match(value) or not low <= int(value) <= high:
        _fail(text, f"{what} must be a whole number {low}-{high}, not {value!r}", "directive.number")
    return str(int(value))


def _time(text: str, args: tuple[str, ...]) -> str:
    """The one argument of keepalive_timeout in its one form: ``Ns`` when whole seconds, else ``Nms``."""
    match = _TIME_RE.match(args[0]) if len(args) == 1 else None
    if not match:
        _fail(text, "write 'keepalive_timeout TIME', like 60s or 500ms", "directive.time")
    unit = match.group(1) or ""
    milliseconds = int(args[0][:len(args[0]) - len(unit)]) * _TIME_MS[unit]
    if milliseconds > MAX_TIME_MS:
        _fail(text, f"keepalive_timeout is at most {MAX_TIME_MS}ms (nginx's timers)", "directive.time")
    return f"{milliseconds // 1000}s" if milliseconds % 1000 == 0 else f"{milliseconds}ms"


def _check(text: str, args: tuple[str, ...]) -> tuple[str, ...]:
    """The arguments of ``check`` in the table's order, numbers without leading zeros."""
    if not args:
        _fail(text, "write 'check key=value ...' with at least one of "
                    f"{', '.join(_CHECK_ORDER)} (Tengine: invalid number of arguments)", "directive.args")
    given: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if key not in _CHECK_KEYS or not sep:
            _fail(text, f"check takes key=value from {', '.join(sorted(_CHECK_KEYS))}, not {arg!r}", "directive.check_key")
        if key in given:
            _fail(text, f"check: {key} is given twice", "directive.check_twice")
        if key in _CHECK_NUMBERS:
            high = _CHECK_NUMBERS[key]
            if not _DIGITS_RE.match(value) or not 1 <= int(value) <= high:
                _fail(text, f"check: {key}={value!r} is not valid: a whole number 1-{high}", "directive.check_value")
            value = str(int(value))
        elif not _CHECK_WORDS[key].match(value):
            _fail(text, f"check: {key}={value!r} is not valid", "directive.check_value")
        given[key] = value
    return tuple(f"{key}={given[key]}" for key in _CHECK_ORDER if key in given)


def _check_args(text: str, name: str, args: tuple[str, ...]) -> tuple[str, ...]:
    """The arguments in their one form; raises ValidationError."""
    if name in ("ip_hash", "least_conn"):
        if args:
            _fail(text, f"{name} takes no arguments", "directive.args")
    elif name in _COUNTS:
        if len(args) != 1:
            _fail(text, f"write '{name} N'", "directive.args")
        return (_int_in(text, args[0], 1, _COUNTS[name], name),)
    elif name == "keepalive_timeout":
        return (_time(text, args),)
    elif name == "check":
        return _check(text, args)
    elif name == "check_http_send":
        if len(args) != 1 or not _QUOTED_RE.match(args[0]):
            _fail(text, 'write check_http_send "REQUEST" with one double-quoted string (escapes: \\r \\n \\t \\" \\\\)', "directive.http_send")
    elif name == "check_http_expect_alive":
        if not args or any(arg not in _EXPECT for arg in args) or len(set(args)) != len(args):
            _fail(text, f"check_http_expect_alive takes one or more of {', '.join(_EXPECT)}", "directive.expect_alive")
        return tuple(sorted(args))
    else:
        known = "ip_hash, least_conn, keepalive, keepalive_timeout, keepalive_requests, check, " \
                "check_http_send, check_http_expect_alive, check_keepalive_requests"
        _fail(text, f"unknown upstream directive {name!r}; known: {known} (servers go in 'servers')", "directive.unknown")
    return args


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
    return Directive(name, _check_args(value, name, args))


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
    send = next((directive for directive in directives if directive.name == "check_http_send"), None)
    if send is not None:
        check = next((directive for directive in directives if directive.name == "check"), None)
        if check is None:
            raise ValidationError("upstream directives", list(values), "check_http_send needs a check directive in "
                                  "the same upstream (Tengine: should set [check] first)", "directives.http_send_check")
        if send.args[0] != '""' and "type=http" not in check.args:
            raise ValidationError("upstream directives", list(values), "check_http_send needs check type=http "
                                  "(Tengine refuses it for another type, tcp the default)", "directives.http_send_type")
    return tuple(sorted(directives, key=lambda directive: (
        not directive.is_balancing, ORDER.index(directive.name) if directive.name in ORDER else -1)))
