"""The Lua flavor's rules agree with the Python rules: the shared vectors and a differential run.

A real nginx runs ``swallowkeeper_dyups.rules`` (through the test-only probe
tests/support/lua/dyups_rules_probe.lua); the expected answers come from tests/vectors/*.json and
from the collection's own Python functions on the same inputs. Both sides must give the same rule
id (``ValidationError.rule_id``) for a refusal and the same canonical output (server spec, /detail
line, directive text, upstream body) for valid input; the wording of a refusal is each side's own.
Any mismatch is listed with its input, so a failure says which rule drifted.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._directives import parse_directive
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_wire import detail_line
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import name_check, name_key
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import parse_server
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream_file import parse as parse_file
from tests.support.nginx_lua import make_nginx_lua_fixture

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
PROBE = """
        location = /_test/rules {
            client_max_body_size 16m;
            client_body_buffer_size 16m;
            content_by_lua_block { require("dyups_rules_probe").handle() }
        }
"""

probe_nginx = make_nginx_lua_fixture(scope="module", workers=1, server_snippet=PROBE)


def lua(nginx, kind, inputs):
    """Run ``inputs`` through the Lua rules; one result tuple per input: ("ok", ...) or ("err", rule id, message)."""
    results = []
    for start in range(0, len(inputs), 2000):
        chunk = inputs[start:start + 2000]
        body = "".join(f"{kind}\t{text.encode('utf-8').hex()}\n" for text in chunk)
        status, answer, _unused = nginx.request("/_test/rules", method="POST", body=body, timeout=60)
        assert status == 200, answer
        lines = answer.rstrip("\n").split("\n")
        assert len(lines) == len(chunk), answer[-2000:]
        for line in lines:
            results.append(tuple(bytes.fromhex(field).decode("utf-8", "replace") for field in line.split("\t")))
    crashes = [(text, result) for text, result in zip(inputs, results) if result[0] == "crash"]
    assert not crashes, f"the Lua rules raised an error: {crashes[:5]}"
    return results


def python_server(text):
    try:
        server = parse_server(text)
    except ValidationError as exc:
        return ("err", exc.rule_id)
    return ("ok", server.spec(), detail_line(server))


def python_directive(text):
    try:
        return ("ok", parse_directive(text).text)
    except ValidationError as exc:
        return ("err", exc.rule_id)


def python_body(body):
    """What the Python side makes of a POST body: the block ``upstream x { BODY }`` of an upstream file."""
    try:
        upstreams = parse_file("upstream x {\n" + body + "\n}\n")
    except ValidationError as exc:
        return ("err", exc.rule_id)
    upstream = upstreams["x"]
    data = upstream.to_dict()
    return ("ok", "\n".join(data["servers"]), "\n".join(data["directives"]))


def python_name(name):
    found = name_check(name)
    return ("err", found[0]) if found else ("ok", name_key(name))


def verdict(result):
    """("ok", canonical output...) as is; a refusal as ("err", rule id), its message left out."""
    return result[:2] if result[0] == "err" else result


def mismatches(inputs, got, expected):
    return [{"input": text, "lua": mine, "python": theirs}
            for text, mine, theirs in zip(inputs, got, expected) if verdict(mine) != theirs]


def vector_expectation(case, *fields):
    return tuple(["ok"] + [case[field] for field in fields]) if case["valid"] else ("err", case["rule"])


# -- the shared vectors ------------------------------------------------------------------------------

def test_name_vectors(probe_nginx):
    cases = json.loads((VECTORS / "names.json").read_text())["cases"]
    names = [case["name"] for case in cases]
    expected = [vector_expectation(case, "key") for case in cases]
    bad = mismatches(names, lua(probe_nginx, "name", names), expected)
    assert not bad, bad
    assert len(cases) >= 30


def test_server_vectors(probe_nginx):
    cases = json.loads((VECTORS / "servers.json").read_text())["cases"]
    inputs = [case["input"] for case in cases]
    expected = [vector_expectation(case, "spec", "detail") for case in cases]
    bad = mismatches(inputs, lua(probe_nginx, "server", inputs), expected)
    assert not bad, bad


def test_directive_vectors(probe_nginx):
    cases = json.loads((VECTORS / "directives.json").read_text())["cases"]
    inputs = [case["input"] for case in cases]
    expected = [vector_expectation(case, "text") for case in cases]
    bad = mismatches(inputs, lua(probe_nginx, "directive", inputs), expected)
    assert not bad, bad


def test_body_vectors(probe_nginx):
    cases = json.loads((VECTORS / "bodies.json").read_text())["cases"]
    inputs = [case["body"] for case in cases]
    expected = [("ok", "\n".join(case["servers"]), "\n".join(case["directives"])) if case["valid"]
                else ("err", case["rule"]) for case in cases]
    bad = mismatches(inputs, lua(probe_nginx, "body", inputs), expected)
    assert not bad, bad


def test_refusals_are_one_printable_line_naming_the_input(probe_nginx):
    """A refusal's message goes into a 400 answer and a log line: one line of printable ASCII, naming
    what was refused (control and non-ASCII bytes of the input shown as \\xNN)."""
    cases = [case for case in json.loads((VECTORS / "servers.json").read_text())["cases"] if not case["valid"]]
    results = lua(probe_nginx, "server", [case["input"] for case in cases])
    assert all(result[0] == "err" for result in results), results
    bad = [(case["input"], result[2]) for case, result in zip(cases, results)
           if not result[2].isascii() or not result[2].isprintable() or not result[2].startswith("server \"")]
    assert not bad, bad
    tab = lua(probe_nginx, "server", ["10.0.0.1:80\tweight=2"])[0]
    assert tab[:2] == ("err", "server.syntax") and "\\x09" in tab[2], tab


# -- differential: random inputs, Python's answer is the expected one ----------------------------------

SERVER_PIECES = [
    "10.0.0.1", "127.0.0.1", "0.0.0.0", "255.255.255.255", "256.1.1.1", "01.2.3.4", "1.2.3", "1.2.3.4.5",
    "[::1]", "[2001:db8::1]", "[2001:DB8:0:0:0:0:0:1]", "[::ffff:1.2.3.4]", "[1:2:3:4:5:6:7:8]", "[1::2::3]",
    "[fe80::1%eth0]", "[::]", "[:1]", "[1:]", "[12345::]", "[::1", "::1", "localhost", "App-1.Example.internal",
    "example.com.", "a..b", "-a.com", "a-.com", "host.123", "x" * 63 + ".com", "x" * 64 + ".com", "\u212a.com",
    ":", ":80", ":0", ":65535", ":65536", ":08080", ":abc", "", " ", "  ", "\t", "\u00a0", "\u2003", "\x1c",
    "\x0b", "\x85", "weight=", "weight=2", "weight=0", "weight=007", "weight=10000", "weight=10001",
    "weight=-1", "max_fails=0", "max_fails=3", "max_conns=100", "max_conns=1000001", "fail_timeout=",
    "fail_timeout=10", "fail_timeout=5s", "fail_timeout=2m", "fail_timeout=1h", "fail_timeout=1d",
    "fail_timeout=3000ms", "fail_timeout=500ms", "fail_timeout=86401", "fail_timeout=1m30s", "fail_timeout=10S",
    "backup", "down", "backup=1", "resolve", "weight", "server", ";", "{", "}", "#", '"', "'", "\\", "=", "é",
    "unix:/tmp/x.sock", "%", "/", "[", "]", "\u205f", "\u1680", "\u2028", "\u202f", "\x1d", "\u200a", "\u200b",
]


def random_servers(rng, count):
    out = []
    for _unused in range(count):
        if rng.random() < 0.5:
            host = rng.choice(SERVER_PIECES[:40])
            port = rng.choice(["", ":80", ":8080", ":0", ":65535", ":70000"]) if not host.endswith("]") or \
                rng.random() < 0.8 else ""
            params = [rng.choice(SERVER_PIECES[40:]) for _unused in range(rng.randint(0, 4))]
            text = host + port + "".join(rng.choice([" ", "  ", "\t", "\u00a0", " "]) + p for p in params)
        else:
            text = "".join(rng.choice(SERVER_PIECES) for _unused in range(rng.randint(1, 6)))
        if rng.random() < 0.1:
            text = rng.choice([" ", "\t", "\u3000", "\x1f"]) + text + rng.choice(["", " ", "\x0c", "\u2029"])
        out.append(text)
    return out


def test_servers_match_python(probe_nginx):
    rng = random.Random(20261126)
    inputs = random_servers(rng, 6000)
    got = lua(probe_nginx, "server", inputs)
    expected = [python_server(text) for text in inputs]
    bad = mismatches(inputs, got, expected)
    assert not bad, f"{len(bad)} of {len(inputs)} differ, first ones: {bad[:10]}"
    assert sum(1 for result in expected if result[0] == "ok") > 250, "the generator makes too few valid servers"


def test_ipv6_addresses_match_python(probe_nginx):
    """IPv6 parsing and compression, which Python's ipaddress does and the Lua rules redo."""
    rng = random.Random(7)
    groups = ["0", "00", "000", "0000", "1", "a", "A", "ffff", "FFFF", "12345", "g", "", "db8", "2001"]
    inputs = []
    for _unused in range(4000):
        count = rng.randint(1, 9)
        parts = [rng.choice(groups) for _unused in range(count)]
        if rng.random() < 0.2:
            parts[-1] = rng.choice(["1.2.3.4", "01.2.3.4", "1.2.3", "255.255.255.255", "256.0.0.1"])
        address = ":".join(parts)
        if rng.random() < 0.3:
            cut = rng.randint(0, len(address))
            address = address[:cut] + "::" + address[cut:]
        if rng.random() < 0.05:
            address += rng.choice(["%eth0", "%", "%a%b", "/64"])
        inputs.append(f"[{address}]:{rng.choice(['80', '1'])}")
    got = lua(probe_nginx, "server", inputs)
    expected = [python_server(text) for text in inputs]
    bad = mismatches(inputs, got, expected)
    assert not bad, f"{len(bad)} of {len(inputs)} differ, first ones: {bad[:10]}"
    assert sum(1 for result in expected if result[0] == "ok") > 400


DIRECTIVE_PIECES = [
    "keepalive", "keepalive_timeout", "keepalive_requests", "ip_hash", "least_conn", "hash", "check",
    "check_http_send", "check_http_expect_alive", "check_keepalive_requests", "server", "foo", " ", "  ", "\t",
    "\u00a0", "0", "1", "32", "100000", "100001", "1000000000", "60s", "500ms", "1m", "10x", "$remote_addr",
    "$request_uri", "consistent", "interval=3000", "rise=2", "fall=5", "timeout=1000", "type=http", "type=xyz",
    "default_down=true", "port=8080", "interval=1", "fall=02", "port=0", "rise", "rise=", "http_2xx", "http_3xx", "http_9xx", '"GET / HTTP/1.0\\r\\n\\r\\n"',
    '"a\\qb"', '"open', '"a;b"', '""', ";", "{", "}", "#", "'", "\\", '"', "\n", "\x01", "\x7f", "é",
]


def random_directives(rng, count):
    out = []
    names = DIRECTIVE_PIECES[:11]
    check_args = ["interval=3000", "rise=2", "fall=05", "timeout=0", "type=http", "type=tcp", "default_down=false",
                  "port=65536", "port=80", "rise=2"]
    for _unused in range(count):
        if rng.random() < 0.1:  # check, its arguments in any order: the one form both sides give
            text = " ".join(["check"] + rng.sample(check_args, rng.randint(1, 4)))
        elif rng.random() < 0.6:
            words = [rng.choice(names)] + [rng.choice(DIRECTIVE_PIECES[16:]) for _unused in range(rng.randint(0, 3))]
            text = " ".join(words)
        else:
            text = "".join(rng.choice(DIRECTIVE_PIECES) for _unused in range(rng.randint(1, 6)))
        if rng.random() < 0.15:
            text += rng.choice([";", " ;", "; ", ";;"])
        out.append(text)
    return out


def test_directives_match_python(probe_nginx):
    rng = random.Random(42)
    inputs = random_directives(rng, 6000)
    got = lua(probe_nginx, "directive", inputs)
    expected = [python_directive(text) for text in inputs]
    bad = mismatches(inputs, got, expected)
    assert not bad, f"{len(bad)} of {len(inputs)} differ, first ones: {bad[:10]}"
    assert sum(1 for result in expected if result[0] == "ok") > 300


def random_bodies(rng, count):
    servers = [s for s in random_servers(rng, 400) if "\n" not in s]
    valid_servers = [s for s in servers if python_server(s)[0] == "ok"]
    directives = [d for d in random_directives(rng, 400) if "\n" not in d]
    valid_directives = [d for d in directives if python_directive(d)[0] == "ok"]
    out = []
    for _unused in range(count):
        statements = []
        for _unused in range(rng.randint(0, 4)):
            pool = rng.choice([valid_servers, valid_servers, servers])
            statements.append("server " + rng.choice(pool) + ";")
        for _unused in range(rng.randint(0, 2)):
            statements.append(rng.choice(rng.choice([valid_directives, directives])).rstrip(";") + ";")
        rng.shuffle(statements)
        separator = rng.choice(["\n", "", " ", "\n\n", " # note\n"])
        body = separator.join(statements)
        if rng.random() < 0.1:
            body = body.rstrip(";")
        out.append(body)
    return out


def test_bodies_match_python(probe_nginx):
    """Whole POST bodies: tokenizer, statements, duplicates, balancing-method and backup rules."""
    rng = random.Random(99)
    inputs = [body for body in random_bodies(rng, 3000) if "{" not in body and "}" not in body]
    got = lua(probe_nginx, "body", inputs)
    expected = [python_body(body) for body in inputs]
    bad = mismatches(inputs, got, expected)
    assert not bad, f"{len(bad)} of {len(inputs)} differ, first ones: {bad[:10]}"
    assert sum(1 for result in expected if result[0] == "ok") > 300


def test_body_that_closes_the_block_is_refused(probe_nginx):
    """A body is the inside of one block: '}' or '{' anywhere outside quotes is refused."""
    bodies = ["server 127.0.0.1:18101; } server { listen 9999;", "server 127.0.0.1:1; }",
              "} upstream y { server 127.0.0.1:1;", "server 127.0.0.1:1; location / { }"]
    results = [verdict(result) for result in lua(probe_nginx, "body", bodies)]
    assert results == [("err", "body.closes_block")] * 3 + [("err", "block.nested")], results


def test_names_match_python(probe_nginx):
    rng = random.Random(5)
    alphabet = "aZ09_.-/ \t{};'\"#$:%é\x00\x7f\u212a\u00a0"
    inputs = ["".join(rng.choice(alphabet) for _unused in range(rng.randint(0, 6))) for _unused in range(3000)]
    inputs += ["a" * n for n in (127, 128, 129)] + ["é" * 128, "é" * 129, "a" * 127 + "é"]
    got = lua(probe_nginx, "name", inputs)
    expected = [python_name(name) for name in inputs]
    bad = mismatches(inputs, got, expected)
    assert not bad, f"{len(bad)} of {len(inputs)} differ, first ones: {bad[:10]}"


@pytest.mark.parametrize("kind", ["name", "server", "directive", "body"])
def test_probe_reports_refusals(probe_nginx, kind):
    """The probe itself can fail a comparison: a clearly invalid input comes back as an error."""
    result = lua(probe_nginx, kind, ["a;b{"])[0]
    assert result[0] == "err" and result[1].split(".")[0] in ("name", "server", "directive", "block"), result


def test_long_runs_take_linear_time(probe_nginx):
    """200 000 characters of whitespace (or dots in a host name) inside a server or directive: answered at
    once (a pattern anchored at the end would backtrack over the run for minutes), with Python's verdict."""
    run = "\x0b" * 200000
    inputs = {"server": ["10.0.0.1:80" + run + "x", run + "10.0.0.1:80" + run, "a" + "." * 200000 + "b:80",
                         "a" + "." * 200000],
              "directive": ["keepalive 32" + run + "x", run + "keepalive 32" + run]}
    started = time.monotonic()
    got = {kind: [verdict(result) for result in lua(probe_nginx, kind, texts)] for kind, texts in inputs.items()}
    elapsed = time.monotonic() - started
    assert elapsed < 30, elapsed  # measured 1-4 s on a loaded machine; the backtracking kind took minutes
    assert got == {"server": [python_server(text) for text in inputs["server"]],
                   "directive": [python_directive(text) for text in inputs["directive"]]}, got
