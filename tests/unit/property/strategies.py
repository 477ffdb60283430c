"""Hypothesis strategies for the property tests: valid values built from the rules, and hostile input.

Valid values are built from the documented rules (plugins/module_utils/_names.py, _servers.py,
_directives.py), not from the code under test, so a rule the code gets wrong shows up as a failed
round trip. ``CASES`` counts the examples each property ran (conftest.py reports them).
"""

from __future__ import annotations

import string
from collections import Counter

from hypothesis import strategies as st

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import Server
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream

CASES = Counter()

NAME_FIRST = string.ascii_letters + string.digits + "_"
NAME_CHARS = NAME_FIRST + ".-"
FORBIDDEN = set(';{}"\'#\\') | {chr(i) for i in range(32)} | {"\x7f"}
HOSTILE_CHARS = " ;{}'\"#\\\t\n\r\x00\x0b\x7f/%$=:[]é\u2028\u00a0\u0660"


def count(name, number=1):
    CASES[name] += number


def has_forbidden(text):
    return any(char in FORBIDDEN for char in text)


valid_names = st.builds(lambda first, rest: first + rest, st.sampled_from(NAME_FIRST),
                        st.text(NAME_CHARS, max_size=127))
name_candidates = st.one_of(
    valid_names,
    st.text(max_size=140),
    st.text(NAME_CHARS + HOSTILE_CHARS, max_size=140),
    st.builds(lambda name, junk, at: name[:at] + junk + name[at:], valid_names,
              st.text(HOSTILE_CHARS, min_size=1, max_size=3), st.integers(0, 130)),
)

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(  # the canonical form: IPv4-mapped ones as nginx prints them
    lambda address: f"::ffff:{address.ipv4_mapped}" if address.ipv4_mapped else address.compressed)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)
hostnames = st.lists(_label, min_size=1, max_size=4).map(".".join).filter(
    lambda host: len(host) <= 253 and not host.rsplit(".", 1)[-1].isdigit())
hosts = st.one_of(ipv4, ipv6, hostnames)

servers = st.builds(
    Server, host=hosts, port=st.integers(1, 65535), weight=st.integers(1, 10000), max_fails=st.integers(0, 10000),
    fail_timeout=st.integers(0, 86400), max_conns=st.integers(0, 1000000), backup=st.booleans(),
    down=st.booleans())

# a time of at most 2147483647 ms (nginx's timers), at most 9 digits
_TIME_MOST = {"": 2147483, "s": 2147483, "ms": 999999999, "m": 35791, "h": 596, "d": 24}
_time = st.sampled_from(sorted(_TIME_MOST)).flatmap(
    lambda unit: st.integers(0, _TIME_MOST[unit]).map(lambda n: f"{n}{unit}"))
# Tengine refuses 0 for every number of check; a port is 16 bits
_check_values = {
    "interval": st.integers(1, 999999999).map(str), "rise": st.integers(1, 999999999).map(str),
    "fall": st.integers(1, 999999999).map(str), "timeout": st.integers(1, 999999999).map(str),
    "port": st.integers(1, 65535).map(str),
    "type": st.sampled_from(["tcp", "http", "ssl_hello", "mysql", "ajp", "fastcgi"]),
    "default_down": st.sampled_from(["true", "false"]),
}
_quoted = st.lists(st.one_of(st.characters(min_codepoint=32, max_codepoint=126,
                                           blacklist_characters='"\\\x7f'),
                             st.sampled_from(["\\r", "\\n", "\\t", '\\"', "\\\\"])), max_size=40).map(
    lambda parts: '"' + "".join(parts) + '"')


@st.composite
def check_directive(draw, http=False):
    """``check`` with one or more keys (Tengine needs one); with ``http``, type=http among them."""
    keys = draw(st.lists(st.sampled_from(sorted(_check_values)), unique=True, min_size=1, max_size=7))
    words = [f"{key}={'http' if http and key == 'type' else draw(_check_values[key])}" for key in keys]
    if http and "type" not in keys:
        words.append("type=http")
    return " ".join(["check"] + words)


directive_by_name = {
    "ip_hash": st.just("ip_hash"),
    "least_conn": st.just("least_conn"),
    "keepalive": st.integers(1, 100000).map(lambda n: f"keepalive {n}"),
    "keepalive_timeout": _time.map(lambda t: f"keepalive_timeout {t}"),
    "keepalive_requests": st.integers(1, 100000000).map(lambda n: f"keepalive_requests {n}"),
    "check": check_directive(),
    "check_http_send": _quoted.map(lambda q: f"check_http_send {q}"),
    "check_http_expect_alive": st.lists(st.sampled_from(["http_1xx", "http_2xx", "http_3xx", "http_4xx", "http_5xx"]),
                                        unique=True, min_size=1, max_size=4).map(
        lambda kinds: " ".join(["check_http_expect_alive"] + kinds)),
    "check_keepalive_requests": st.integers(1, 100000000).map(lambda n: f"check_keepalive_requests {n}"),
}
directives = st.one_of(list(directive_by_name.values()))


@st.composite
def upstreams(draw, name=None):
    """A valid Upstream built through build_upstream from independently generated parts."""
    name = name or draw(valid_names)
    chosen = draw(st.lists(servers, min_size=1, max_size=6, unique_by=lambda server: server.address))
    names = draw(st.lists(st.sampled_from(sorted(directive_by_name)), unique=True, max_size=4))
    balancing = [n for n in names if n in ("ip_hash", "least_conn")]
    names = [n for n in names if n not in balancing[1:]]
    if "ip_hash" in names:
        chosen = [server.replace(backup=False) for server in chosen]
    if all(server.backup for server in chosen):  # nginx needs one primary server
        chosen[0] = chosen[0].replace(backup=False)
    if "check_http_send" in names and "check" not in names:  # Tengine needs check (type=http) beside it
        names.append("check")
    texts = [draw(check_directive(http=True)) if n == "check" and "check_http_send" in names
             else draw(directive_by_name[n]) for n in names]
    return build_upstream(name, [server.spec() for server in chosen], texts)


upstream_sets = st.lists(upstreams(), max_size=6, unique_by=lambda upstream: upstream.name.lower())

FILE_TOKENS = ["upstream", "server", "{", "}", ";", "\n", "# note\n", '"', "Web", "Web_b", "a b", "x{y",
               "127.0.0.1:80", "[::1]:8080", "app.internal", "weight=2", "weight=0", "backup", "down",
               "keepalive", "32", "ip_hash", "check", "interval=3000", "fail_timeout=5s", "max_fails=x",
               "\t", "\\", "'", "upstream Web {", "server 127.0.0.1:81;", "}\n"]
file_texts = st.one_of(
    st.lists(st.sampled_from(FILE_TOKENS), max_size=40).map(" ".join),
    st.lists(st.sampled_from(FILE_TOKENS), max_size=40).map("".join),
    st.text(max_size=300),
)

DETAIL_TOKENS = ["server", "127.0.0.1:80", "[::1]:81", "weight=2", "weight=-1", "max_conns=0", "down=1",
                 "backup=x", "fail_timeout=10", "Web", "a b", "\n", "\n\n", " ", "=", "foo=1", "999.1.1.1:1"]
detail_texts = st.one_of(
    st.lists(st.sampled_from(DETAIL_TOKENS), max_size=40).map(" ".join),
    st.lists(st.sampled_from(DETAIL_TOKENS), max_size=40).map("".join),
    st.text(max_size=300),
)

SERVER_TOKENS = ["127.0.0.1", ":", "80", "[", "]", "::1", "weight=", "2", "0", "backup", "down", "max_fails=",
                 "fail_timeout=", "10s", "ms", "500", "max_conns=", "app", ".", "-", "server", ";", "{", "#",
                 " ", "\t", "=", "unix:/x", "localhost", "1e3", "+1", "\u0661"]
server_texts = st.one_of(
    st.lists(st.sampled_from(SERVER_TOKENS), max_size=14).map("".join),
    servers.map(lambda server: server.spec()),
    st.text(max_size=80),
)

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=False),
              st.text(HOSTILE_CHARS + NAME_CHARS, max_size=12)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(NAME_CHARS, max_size=8), children, max_size=4)),
    max_leaves=12)
