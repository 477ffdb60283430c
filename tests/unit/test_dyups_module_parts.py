"""The modules' own pieces (no Ansible run): input checks, resolution, connection options, info selection."""

import socket

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_options import (
    check_api_url, dyups_argument_spec, dyups_client_from_params, secret_headers)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import Server
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.modules import dyups_upstream, dyups_upstream_info


def params(**given):
    values = {key: spec.get("default") for key, spec in dyups_upstream.argument_spec().items()}
    values.update(given)
    return values


def test_single_form():
    assert dyups_upstream.requested(params(name="Web", servers=["10.0.0.1:80"])) == \
        {"Web": build_upstream("Web", ["10.0.0.1:80"])}
    assert dyups_upstream.requested(params(name="Web", servers=["10.0.0.1:80"], directives=["keepalive 2"])) == \
        {"Web": build_upstream("Web", ["10.0.0.1:80"], ["keepalive 2"])}
    assert dyups_upstream.requested(params(name="Web", state="absent")) == {"Web": None}


def test_bulk_form():
    wanted = dyups_upstream.requested(params(upstreams={
        "A": ["10.0.0.1:80"], "B": {"servers": ["10.0.0.2:80"], "directives": ["keepalive 2"]}, "C": {"servers": ["10.0.0.3:80"]}}))
    assert wanted == {"A": build_upstream("A", ["10.0.0.1:80"]), "B": build_upstream("B", ["10.0.0.2:80"], ["keepalive 2"]),
                      "C": build_upstream("C", ["10.0.0.3:80"])}
    assert dyups_upstream.requested(params(upstreams={"A": None, "B": []}, state="absent")) == {"A": None, "B": None}


def test_directives_not_given_are_the_files():
    in_file = {"A": build_upstream("A", ["10.0.0.9:80"], ["keepalive 8"]), "B": build_upstream("B", ["10.0.0.9:80"], ["least_conn"])}
    wanted = dyups_upstream.requested(params(upstreams={"A": ["10.0.0.1:80"], "B": {"servers": ["10.0.0.2:80"], "directives": []},
                                                        "C": ["10.0.0.3:80"]}), in_file)
    assert wanted == {"A": build_upstream("A", ["10.0.0.1:80"], ["keepalive 8"]), "B": build_upstream("B", ["10.0.0.2:80"]),
                      "C": build_upstream("C", ["10.0.0.3:80"])}
    # the file's ip_hash and a new backup server do not go together: refused like any other bad input
    with pytest.raises(ValidationError) as caught:
        dyups_upstream.requested(params(name="H", servers=["10.0.0.1:80", "10.0.0.2:80 backup"]),
                                 {"H": build_upstream("H", ["10.0.0.1:80"], ["ip_hash"])})
    assert "ip_hash balancing does not support backup servers" in str(caught.value)


@pytest.mark.parametrize("given, problem", [
    (dict(name="x{y", servers=["10.0.0.1:80"]), "invalid upstream name 'x{y'"),
    (dict(name="bad name", servers=["10.0.0.1:80"]), "invalid upstream name 'bad name'"),
    (dict(name="bad name", state="absent"), "invalid upstream name 'bad name'"),
    (dict(name="Web", servers=["10.0.0.1:0"]), "invalid server '10.0.0.1:0': the port 0 is outside 1-65535"),
    (dict(name="Web", servers=["10.0.0.1:70000"]), "the port 70000 is outside 1-65535"),
    (dict(name="Web", servers=["10.0.0.1:80 weight=0"]), "weight=0 is outside 1-10000"),
    (dict(name="Web", servers=["10.0.0.1:80 foo=1"]), "unknown parameter 'foo=1'"),
    (dict(name="Web", servers=["10.0.0.1:80"], directives=["keepalive 0"]), "keepalive must be a whole number"),
    (dict(name="Web", servers=[]), "has no servers"),
    (dict(name="Web", servers=None), "has no servers"),
    (dict(name="Web", state="absent", servers=["10.0.0.1:80"]), "takes no servers or directives"),
    (dict(upstreams={"A": ["10.0.0.1:80"], "x{y": ["10.0.0.1:80"]}), "invalid upstream name 'x{y'"),
    (dict(upstreams={"A": ["10.0.0.1:80"], "B": ["10.0.0.1:80 foo=1"]}), "unknown parameter 'foo=1'"),
    (dict(upstreams={"A": {"servers": ["10.0.0.1:80"], "weight": 2}}), "unknown key(s) weight"),
    (dict(upstreams={"A": ["10.0.0.1:80"]}, state="absent", exclusive=True), "applies to state=present only"),
    (dict(name="Web", servers=["10.0.0.1:80"], validate="nginx -t"), "must contain %s"),
])
def test_bad_input(given, problem):
    with pytest.raises(ValidationError) as caught:
        dyups_upstream.requested(params(**given))
    assert problem in str(caught.value)


def fake_getaddrinfo(table):
    def getaddrinfo(host, port, family=0, type=0):  # noqa: A002 (socket's own parameter name)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, type, 6, "", (a, 0)) for a in table[host]]
    return getaddrinfo


def test_resolver_canonical_in_nginx_order_cached():
    calls = []
    table = {"app.example.internal": ["2001:DB8:0::1%eth0", "10.0.0.2", "10.0.0.1", "10.0.0.1"]}

    def counting(*args):
        calls.append(args[0])
        return fake_getaddrinfo(table)(*args)

    resolve = dyups_upstream.make_resolver(counting)
    assert resolve("app.example.internal") == ["10.0.0.2", "10.0.0.1", "2001:db8::1"]  # IPv4 first, in order
    assert resolve("app.example.internal") == ["10.0.0.2", "10.0.0.1", "2001:db8::1"]
    assert resolve("nowhere.example.internal") == []
    assert calls == ["app.example.internal", "nowhere.example.internal"]


def test_resolver_from_a_hosts_file_only(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("# comment\n10.0.0.7 app.example.internal app\n::1 App.Example.Internal\n")
    resolve = dyups_upstream.make_resolver(hosts_file=str(hosts))
    assert resolve("app.example.internal") == ["10.0.0.7", "::1"]
    assert resolve("localhost") == []   # not in that file: the system resolver is not asked


def test_resolver_with_the_system_for_localhost():
    assert "127.0.0.1" in dyups_upstream.make_resolver()("localhost")  # from /etc/hosts, no DNS query


def test_check_resolvable():
    resolve = dyups_upstream.make_resolver(fake_getaddrinfo({"app.example.internal": ["10.0.0.1"]}))
    good = build_upstream("A", ["app.example.internal:80", "10.0.0.9:80"])
    dyups_upstream.check_resolvable({"A": good, "Gone": None}, resolve)
    bad = build_upstream("B", ["nowhere.example.internal:80 weight=2"])
    with pytest.raises(ValidationError) as caught:
        dyups_upstream.check_resolvable({"A": good, "B": bad}, resolve)
    message = str(caught.value)
    assert "nowhere.example.internal:80 weight=2" in message and "does not resolve" in message
    assert "upstream B" in message and "resolve_check=false" in message


@pytest.mark.parametrize("url, expected", [
    ("http://127.0.0.1:18882", "http://127.0.0.1:18882"),
    ("http://127.0.0.1:18882/", "http://127.0.0.1:18882"),
    ("https://[::1]:8443/dyups/", "https://[::1]:8443/dyups"),
    ("http://localhost", "http://localhost"),
])
def test_api_url_ok(url, expected):
    assert check_api_url(url) == expected


@pytest.mark.parametrize("url", ["127.0.0.1:18882", "ftp://127.0.0.1", "http://", "http://h:99999", "http://h:0",
                                 "http://h/?a=1", "http://u:p@h/", "http://h:abc"])
def test_api_url_refused(url):
    with pytest.raises(ValidationError) as caught:
        check_api_url(url)
    assert repr(url) in str(caught.value)


def test_client_from_params():
    spec = dyups_argument_spec()
    assert spec == {"api_url": {"type": "str", "default": "http://127.0.0.1:18882"},
                    "api_secret_file": {"type": "path"}, "timeout": {"type": "float", "default": 5.0}}
    client = dyups_client_from_params({"api_url": "http://127.0.0.1:1/", "timeout": 2.5}, transport=print)
    assert (client.api_url, client.timeout, client.transport) == ("http://127.0.0.1:1", 2.5, print)
    with pytest.raises(ValidationError):
        dyups_client_from_params({"api_url": "http://127.0.0.1:1", "timeout": 0})


def test_the_secret_comes_from_a_file_and_is_never_shown(tmp_path):
    secret = tmp_path / "dyups.secret"
    secret.write_text("  s3cret-0123456789abcdef\n")
    assert secret_headers(str(secret)) == {"X-Dyups-Secret": "s3cret-0123456789abcdef"}
    assert secret_headers(None) == {}
    for text, problem in (("", "is empty"), ("two words here", "printable ASCII")):
        secret.write_text(text)
        with pytest.raises(ValidationError, match=problem) as caught:
            secret_headers(str(secret))
        assert "two words" not in str(caught.value)
    with pytest.raises(ValidationError, match="cannot be read"):
        secret_headers(str(tmp_path / "missing"))


def test_info_select():
    detail = {"b": [Server("10.0.0.2", 80, weight=2), Server("10.0.0.1", 80)], "a": [Server("::1", 81, backup=True)]}
    upstreams, names, missing = dyups_upstream_info.select(detail)
    assert names == ["a", "b"] and missing == []
    assert [s["address"] for s in upstreams["b"]] == ["10.0.0.1:80", "10.0.0.2:80"]
    assert upstreams["a"] == [{"address": "[::1]:81", "host": "::1", "port": 81, "weight": 1, "max_fails": 1,
                               "fail_timeout": 10, "max_conns": 0, "backup": True, "down": False}]
    upstreams, names, missing = dyups_upstream_info.select(detail, ["b", "zz"])
    assert list(upstreams) == names == ["b"] and missing == ["zz"]
    # what info returns is what dyups_upstream takes back
    wanted = dyups_upstream.requested(params(upstreams=upstreams))
    assert wanted["b"].servers == tuple(sorted(detail["b"], key=Server.sort_key))
