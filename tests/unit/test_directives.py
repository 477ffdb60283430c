"""Upstream-level directives: what is accepted, what is refused, and why."""

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._directives import (
    Directive, parse_directive, parse_directives, tokenize)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError


@pytest.mark.parametrize("text, line", [
    ("ip_hash", "ip_hash;"),
    ("least_conn;", "least_conn;"),
    ("keepalive 32", "keepalive 32;"),
    ("  keepalive   32 ; ", "keepalive 32;"),
    ("keepalive_timeout 60s", "keepalive_timeout 60s;"),
    ("keepalive_timeout 500ms", "keepalive_timeout 500ms;"),
    ("keepalive_requests 1000", "keepalive_requests 1000;"),
    ("check interval=3000 rise=2 fall=5 timeout=1000 type=http", "check interval=3000 rise=2 fall=5 timeout=1000 type=http;"),
    ("check type=tcp default_down=false port=8080", "check type=tcp default_down=false port=8080;"),
    ('check_http_send "HEAD / HTTP/1.0\\r\\n\\r\\n"', 'check_http_send "HEAD / HTTP/1.0\\r\\n\\r\\n";'),
    ("check_http_expect_alive http_2xx http_3xx", "check_http_expect_alive http_2xx http_3xx;"),
    ("check_keepalive_requests 10", "check_keepalive_requests 10;"),
])
def test_accepted(text, line):
    assert parse_directive(text).line() == line


@pytest.mark.parametrize("text, problem", [
    ("", "the directive is empty"),
    (";", "the directive is empty"),
    ("keepalive", "write 'keepalive N'"),
    ("keepalive 0", "keepalive must be a whole number 1-100000"),
    ("keepalive 32; server 10.0.0.1:80", "';' is not allowed outside double quotes"),
    ("keepalive 32 }", "'}' is not allowed"),
    ("keepalive 32 { ", "'{' is not allowed"),
    ("keepalive 32\nip_hash", "control characters and line breaks are not allowed"),
    ("keepalive 32 # note", "'#' is not allowed"),
    ("server 10.0.0.1:80", "servers go in 'servers'"),
    ("ip_hash x", "ip_hash takes no arguments"),
    ("hash $remote_addr", "unknown upstream directive 'hash'"),  # poisons a Tengine worker (see the module)
    ("hash a{b", "'{' is not allowed"),
    ('check_http_send "GET /\u00e9 HTTP/1.0"', "only ASCII characters are allowed"),
    ("keepalive\u00a032", "only ASCII characters are allowed"),
    ("check interval=abc", "check: interval='abc' is not valid"),
    ("check foo=1", "check takes key=value from"),
    ("check rise=1 rise=2", "check: rise is given twice"),
    ("check type=gopher", "check: type='gopher' is not valid"),
    ("check_http_send HEAD", "one double-quoted string"),
    ('check_http_send "open', "a double quote is not closed"),
    ("check_http_expect_alive http_9xx", "check_http_expect_alive takes one or more of"),
    ("proxy_pass http://x", "unknown upstream directive 'proxy_pass'"),
    ("zone backend 64k", "unknown upstream directive 'zone'"),
    (3, "a directive is a string"),
])
def test_refused(text, problem):
    with pytest.raises(ValidationError) as caught:
        parse_directive(text)
    assert problem in str(caught.value)
    assert caught.value.value == text


def test_quotes_keep_separators_inside():
    assert tokenize('check_http_send "GET /;{} HTTP/1.0"') == ["check_http_send", '"GET /;{} HTTP/1.0"']
    assert parse_directive('check_http_send "GET /;{} HTTP/1.0"').args == ('"GET /;{} HTTP/1.0"',)


def test_list_rules():
    assert parse_directives(None) == ()
    assert parse_directives("keepalive 8") == (Directive("keepalive", ("8",)),)
    with pytest.raises(ValidationError) as caught:
        parse_directives(["keepalive 8", "keepalive 9"])
    assert "keepalive is given more than once" in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        parse_directives(["ip_hash", "least_conn"])
    assert "only one balancing method per upstream" in str(caught.value)
