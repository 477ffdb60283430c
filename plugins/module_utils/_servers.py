# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: the server spec, the one place it is parsed, checked and rendered.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One upstream server: parsed from user input, rendered for nginx (``_dyups_wire`` reads and writes ``/detail``).

Accepted input, as a string (nginx's own syntax, without ``server`` and ``;``)::

    10.0.0.1:8080 weight=2 max_fails=3 fail_timeout=5s max_conns=100 backup
    [2001:db8::1]:8080 down
    app1.example.internal:8080

or as a dict with the keys ``address`` (or ``host``), ``port``, ``weight``,
``max_fails``, ``fail_timeout``, ``max_conns``, ``backup``, ``down``. ``address``
may carry the port (``10.0.0.1:8080``) or leave it to ``port``
(``{address: 10.0.0.1, port: 8080}``, the shape Consul uses; there a bare IPv6
address such as ``2001:db8::1`` needs no brackets); a port given in both with
different values is refused.

Rules (``tests/vectors/servers.json`` holds the cases that the Python and the
Lua implementation both run):

* ASCII only;
* host: dotted IPv4 without leading zeros, IPv6 in brackets (no zone index; an
  IPv4-mapped address is written ``::ffff:a.b.c.d``, as nginx prints it), or an
  RFC 1123 host name (letters, digits, hyphens; labels of 1-63, 253 in all);
* port: 1-65535; when missing, 80 (nginx's default);
* ``weight`` 1-``MAX_WEIGHT``; ``max_fails`` 0-``MAX_FAILS``; ``max_conns``
  0-``MAX_CONNS`` (0: no limit);
* ``fail_timeout``: whole seconds, 0-``MAX_FAIL_TIMEOUT``, written as ``10``,
  ``10s``, ``2m``, ``1h``, ``1d``, or ``Nms`` when N is a whole number of
  seconds. nginx parses this parameter in seconds and refuses ``500ms``;
* ``backup`` and ``down`` are flags; nothing else is accepted.

``/detail`` prints ``fail_timeout=10`` with no unit: it is seconds.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Iterable, NoReturn

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._slots import with_slots

DEFAULT_PORT = 80
MAX_WEIGHT = 10000
MAX_FAILS = 10000
MAX_CONNS = 1000000
MAX_FAIL_TIMEOUT = 86400

DEFAULTS = {"weight": 1, "max_fails": 1, "fail_timeout": 10, "max_conns": 0, "backup": False, "down": False}
NUMERIC_LIMITS = {
    "weight": (1, MAX_WEIGHT),
    "max_fails": (0, MAX_FAILS),
    "max_conns": (0, MAX_CONNS),
    "fail_timeout": (0, MAX_FAIL_TIMEOUT),
}
FLAGS = ("backup", "down")
PARAMETERS = ("weight", "max_fails", "fail_timeout", "max_conns", "backup", "down")

_IPV4_RE = re.compile(r"(0|[1-9][0-9]{0,2})(\.(0|[1-9][0-9]{0,2})){3}\Z")
_DOTTED_NUMBERS_RE = re.compile(r"[0-9.]+\Z")
_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_DIGITS_RE = re.compile(r"[0-9]+\Z")
_TIME_RE = re.compile(r"([0-9]+)(ms|s|m|h|d)?\Z")
_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _fail(value: Any, rule: str, rule_id: str) -> NoReturn:
    raise ValidationError("server", value, rule, rule_id)


def parse_host(host: str, original: Any = None) -> str:
    """Return the canonical form of a host (IPv6 without brackets) or raise ValidationError."""
    shown = host if original is None else original
    if not host:
        _fail(shown, "the host is empty", "server.host_empty")
    if not host.isascii():
        _fail(shown, "only ASCII characters are allowed", "server.ascii")
    if ":" in host:
        if "%" in host:
            _fail(shown, f"{host!r}: IPv6 zone indexes (%...) are not supported by nginx", "server.ipv6_zone")
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            _fail(shown, f"{host!r} is not an IPv6 address", "server.ipv6_invalid")
        if address.ipv4_mapped is not None:  # nginx prints these as ::ffff:a.b.c.d
            return f"::ffff:{address.ipv4_mapped}"
        return address.compressed
    if _DOTTED_NUMBERS_RE.match(host):
        if not _IPV4_RE.match(host) or any(int(part) > 255 for part in host.split(".")):
            _fail(shown, f"{host!r} is not a dotted IPv4 address (four numbers 0-255, no leading zeros)", "server.ipv4_invalid")
        return host
    name = host.lower().rstrip(".") if host.endswith(".") and len(host) > 1 else host.lower()
    if len(name) > 253:
        _fail(shown, f"the host name is {len(name)} characters long, over 253", "server.hostname_length")
    labels = name.split(".")
    for label in labels:
        if not _LABEL_RE.match(label):
            _fail(shown, f"{host!r} is not a host name: each dot-separated label is 1-63 letters, "
                         "digits or hyphens, and does not start or end with a hyphen", "server.hostname_label")
    if _DIGITS_RE.match(labels[-1]):
        _fail(shown, f"{host!r} is not a host name: its last label is all digits", "server.hostname_numeric")
    return name


def host_kind(host: str) -> str:
    """'ipv4', 'ipv6' or 'hostname', for a host already in canonical form."""
    if ":" in host:
        return "ipv6"
    if _IPV4_RE.match(host):
        return "ipv4"
    return "hostname"


def parse_address(address: Any, original: Any = None) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` / ``host`` into (canonical host, port)."""
    host, port = _split_address(address, original)
    return host, DEFAULT_PORT if port is None else port


def _split_address(address: Any, original: Any = None) -> tuple[str, int | None]:
    """(canonical host, port or None when the address has none)."""
    shown = address if original is None else original
    if not isinstance(address, str):
        _fail(shown, "the address must be a string", "server.address_type")
    if address.startswith("unix:"):
        _fail(shown, "unix sockets are not supported; use host:port", "server.unix")
    if address.startswith("["):
        close = address.find("]")
        if close < 0:
            _fail(shown, "an IPv6 address opened with '[' is not closed with ']'", "server.bracket_unclosed")
        host, rest = address[1:close], address[close + 1:]
        if ":" not in host:
            _fail(shown, f"{host!r} in brackets is not an IPv6 address", "server.ipv6_invalid")
        if rest and not rest.startswith(":"):
            _fail(shown, "expected ':port' after the bracketed IPv6 address", "server.after_bracket")
        port_text = rest[1:] if rest else None
    else:
        if address.count(":") > 1:
            _fail(shown, "an IPv6 address must be written in brackets, like [2001:db8::1]:8080", "server.ipv6_unbracketed")
        host, sep, port_text = address.partition(":")
        if not sep:
            port_text = None
    canonical = parse_host(host, shown)
    if port_text is None:
        return canonical, None
    return canonical, parse_port(port_text, shown)


def parse_port(value: Any, original: Any = None) -> int:
    shown = value if original is None else original
    if isinstance(value, bool):
        _fail(shown, "the port must be a number 1-65535", "server.port_syntax")
    if isinstance(value, int):
        port = value
    elif isinstance(value, str) and _DIGITS_RE.match(value) and len(value) <= 5:
        port = int(value)
    else:
        _fail(shown, f"the port {value!r} is not a number 1-65535", "server.port_syntax")
    if not 1 <= port <= 65535:
        _fail(shown, f"the port {port} is outside 1-65535", "server.port_range")
    return port


def _parse_number(key: str, value: Any, original: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        _fail(original, f"{key} must be a whole number", f"server.{key}_int")
    if isinstance(value, str):
        if not _DIGITS_RE.match(value) or len(value) > 9:
            _fail(original, f"{key}={value!r} is not a whole number", f"server.{key}_int")
        value = int(value)
    low, high = NUMERIC_LIMITS[key]
    if not low <= value <= high:
        _fail(original, f"{key}={value} is outside {low}-{high}", f"server.{key}_range")
    return value


def parse_fail_timeout(value: Any, original: Any = None) -> int:
    """Seconds from ``10``, ``'10'``, ``'10s'``, ``'2m'``, ``'1h'``, ``'1d'`` or ``'3000ms'``."""
    shown = value if original is None else original
    if isinstance(value, bool):
        _fail(shown, "fail_timeout must be a time in seconds", "server.fail_timeout_time")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        match = _TIME_RE.match(value)
        if not match or len(match.group(1)) > 9:
            _fail(shown, f"fail_timeout={value!r} is not a time: use N, Ns, Nm, Nh or Nd", "server.fail_timeout_time")
        number, unit = int(match.group(1)), match.group(2)
        if unit == "ms":
            if number % 1000:
                _fail(shown, f"fail_timeout={value} is not a whole number of seconds; "
                             "nginx reads fail_timeout in seconds and refuses milliseconds", "server.fail_timeout_ms")
            seconds = number // 1000
        else:
            seconds = number * _TIME_UNITS[unit]
    else:
        _fail(shown, "fail_timeout must be a time in seconds", "server.fail_timeout_time")
    if not 0 <= seconds <= MAX_FAIL_TIMEOUT:
        _fail(shown, f"fail_timeout={seconds}s is outside 0-{MAX_FAIL_TIMEOUT}s", "server.fail_timeout_range")
    return seconds


def _parse_flag(key: str, value: Any, original: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    _fail(original, f"{key} must be true or false, not {value!r}", f"server.{key}_flag")


@with_slots  # a watcher holds one per instance
@dataclass(frozen=True)
class Server:
    """A validated server; build it with ``parse_server`` (or ``_dyups_wire.parse_detail_line``)."""

    host: str
    port: int = DEFAULT_PORT
    weight: int = 1
    max_fails: int = 1
    fail_timeout: int = 10
    max_conns: int = 0
    backup: bool = False
    down: bool = False

    @property
    def address(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def kind(self) -> str:
        return host_kind(self.host)

    def parameters(self) -> list[str]:
        """Parameters that differ from nginx's defaults, in nginx's syntax."""
        words = []
        for key in ("weight", "max_fails", "fail_timeout", "max_conns"):
            value = getattr(self, key)
            if value != DEFAULTS[key]:
                words.append(f"{key}={value}s" if key == "fail_timeout" else f"{key}={value}")
        words.extend(flag for flag in FLAGS if getattr(self, flag))
        return words

    def spec(self) -> str:
        """``10.0.0.1:8080 weight=2 backup``: the form users write, also the file's and the body's."""
        return " ".join([self.address] + self.parameters())

    def directive(self) -> str:
        return f"server {self.spec()};"

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "host": self.host,
            "port": self.port,
            "weight": self.weight,
            "max_fails": self.max_fails,
            "fail_timeout": self.fail_timeout,
            "max_conns": self.max_conns,
            "backup": self.backup,
            "down": self.down,
        }

    def sort_key(self) -> tuple[bool, str, str, int]:
        return (self.backup, self.kind, self.host, self.port)

    def replace(self, **changes: Any) -> Server:
        values = {key: getattr(self, key) for key in ("host", "port") + PARAMETERS}
        values.update(changes)
        return Server(**values)


def _from_string(text: str) -> Server:
    if any(char in text for char in ";{}\"'#\\") or any(ord(c) < 32 or ord(c) == 127 for c in text):
        _fail(text, "a server is written as 'host:port [parameter ...]' with no ; { } quotes, # or control characters", "server.syntax")
    words = text.split()
    if not words:
        _fail(text, "the server is empty", "server.empty")
    if words[0] == "server":
        _fail(text, "write the server without the word 'server', like '10.0.0.1:8080 weight=2'", "server.word_server")
    host, port = parse_address(words[0], text)
    values: dict[str, Any] = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if key in values:
            _fail(text, f"{key} is given twice", "server.param_twice")
        if key in FLAGS:
            if sep:
                _fail(text, f"{key} is a flag and takes no value: write '{key}'", "server.flag_value")
            values[key] = True
        elif key in NUMERIC_LIMITS and sep:
            values[key] = parse_fail_timeout(value, text) if key == "fail_timeout" else _parse_number(key, value, text)
        elif key in NUMERIC_LIMITS:
            _fail(text, f"{key} needs a value, like {key}=2", "server.param_needs_value")
        else:
            _fail(text, f"unknown parameter {word!r}; known: {', '.join(PARAMETERS)}", "server.param_unknown")
    return Server(host=host, port=port, **values)


def _is_bare_ipv6(text: str) -> bool:
    """An IPv6 literal without brackets (and so without a port), such as Consul's Service.Address."""
    if text.count(":") < 2 or text.startswith("["):
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _dict_host(data: dict[str, Any]) -> str:
    if not isinstance(data["host"], str):
        _fail(data, "host must be a string", "server.host_type")
    host = data["host"]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return parse_host(host, data)


def _from_dict(data: dict[str, Any]) -> Server:
    unknown = sorted(set(data) - set(("address", "host", "port") + PARAMETERS))
    if unknown:
        _fail(data, f"unknown key(s) {', '.join(unknown)}; known: address, host, port, {', '.join(PARAMETERS)}", "server.dict_keys")
    if "address" in data and data["address"] is not None:
        address = data["address"]
        if data.get("port") is not None and isinstance(address, str) and _is_bare_ipv6(address):
            host, port = parse_host(address, data), None  # Consul's shape: {address: 2001:db8::1, port: 8080}
        else:
            host, port = _split_address(address, data)
        # Server.to_dict() gives address, host and port: accept all three when they agree, so it parses back.
        if data.get("host") is not None and _dict_host(data) != host:
            _fail(data, "host and address disagree; give either address or host (with port)", "server.host_address_mismatch")
        if data.get("port") is not None:
            given = parse_port(data["port"], data)
            if port is not None and given != port:
                _fail(data, f"the port is given twice with different values (address {address!r}, port {given}); "
                            "give it once", "server.port_twice")
            port = given
        elif port is None:
            port = DEFAULT_PORT
    elif data.get("host") is not None:
        host = _dict_host(data)
        port = DEFAULT_PORT if data.get("port") is None else parse_port(data["port"], data)
    else:
        _fail(data, "a server needs address ('host:port') or host", "server.no_address")
    values: dict[str, Any] = {}
    for key in PARAMETERS:
        value = data.get(key)
        if value is None:
            continue
        if key in FLAGS:
            values[key] = _parse_flag(key, value, data)
        elif key == "fail_timeout":
            values[key] = parse_fail_timeout(value, data)
        else:
            values[key] = _parse_number(key, value, data)
    return Server(host=host, port=port, **values)


def parse_server(value: Any) -> Server:
    """A Server from a string, a dict or a Server; raises ValidationError with the value and the rule."""
    if isinstance(value, Server):
        return value
    if isinstance(value, str):
        if not value.isascii():  # nginx splits on ASCII whitespace only; no non-ASCII has a meaning here
            _fail(value, "only ASCII characters are allowed", "server.ascii")
        return _from_string(value.strip())
    if isinstance(value, dict):
        return _from_dict(value)
    _fail(value, f"a server is a string like '10.0.0.1:8080 weight=2' or a dict, not {type(value).__name__}", "server.type")


def parse_servers(values: Any) -> list[Server]:
    """Parse a list of servers; the same address twice is an error (nginx would balance to it twice)."""
    if isinstance(values, (str, dict)):
        values = [values]
    servers = [parse_server(value) for value in values]
    seen = set()
    for server in servers:
        if server.address in seen:
            raise ValidationError("server", server.address, "the same address is listed twice in one upstream", "server.duplicate")
        seen.add(server.address)
    return servers


def sort_servers(servers: Iterable[Server]) -> list[Server]:
    return sorted(servers, key=Server.sort_key)
