"""ConsulClient, BlockingQuery and resolve_token (plugins/module_utils/_consul_client.py).

``ScriptedTransport`` below is a stand-in for error paths a real agent will not produce on demand
(a 429, a 500, a body that is not JSON, a bad X-Consul-Index, an index that goes backwards); the
same client runs against a real Consul agent in tests/integration/test_consul_live_client.py.
"""

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import (
    MAX_WAIT, BlockingQuery, ConsulAnswer, ConsulClient, format_wait, resolve_token, tls_hint)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import (
    ConsulBadAnswer, ConsulError, ConsulForbidden, ConsulRateLimited, ConsulServerError, ConsulTLSError,
    ConsulUnavailable, TransportError, ValidationError)

TOKEN = "3f1c2d4e-secret-token"


class ScriptedTransport:
    """Answers from a script of (status, body, headers) or exceptions; records every call.

    A stand-in for error paths only (see the module docstring).
    """

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, method, url, body, timeout, extra_headers=None):
        self.calls.append({"method": method, "url": url, "timeout": timeout, "headers": dict(extra_headers or {})})
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        status, body, headers = answer
        return status, body.encode() if isinstance(body, str) else body, headers


def ok(body="{}", index="7"):
    return 200, body, {"x-consul-index": index} if index is not None else {}


# -- requests ---------------------------------------------------------------------------------------------
def test_token_goes_in_the_header_only_and_never_in_the_url_or_repr():
    transport = ScriptedTransport(ok('{"consul": [], "web": []}'))
    client = ConsulClient("http://127.0.0.1:8500/", transport, token=TOKEN, datacenter="dc2")
    answer = client.catalog_services()
    call = transport.calls[0]
    assert call["headers"] == {"X-Consul-Token": TOKEN}
    assert TOKEN not in call["url"] and TOKEN not in repr(client) and TOKEN not in answer.url
    assert call["url"] == "http://127.0.0.1:8500/v1/catalog/services?dc=dc2"
    assert answer == ConsulAnswer(data={"consul": [], "web": []}, index=7, url=call["url"])


def test_no_token_sends_no_header():
    transport = ScriptedTransport(ok('[]'))
    ConsulClient("http://c:8500", transport).health_state_any()
    assert transport.calls[0]["headers"] == {}


def test_blocking_parameters_and_timeout():
    transport = ScriptedTransport(ok("[]", "42"))
    client = ConsulClient("http://c:8500", transport, timeout=5, stale=True)
    client.health_state_any(index=41, wait=160)
    call = transport.calls[0]
    assert call["url"] == "http://c:8500/v1/health/state/any?stale=&index=41&wait=160000ms"
    assert call["timeout"] == pytest.approx(5 + 160 + 10)


def test_wait_is_capped_at_ten_minutes():
    transport = ScriptedTransport(ok("[]", "42"))
    ConsulClient("http://c:8500", transport).get("/v1/health/state/any", index=1, wait=3600)
    assert "wait=600000ms" in transport.calls[0]["url"]
    assert format_wait(MAX_WAIT * 2) == "600000ms" and format_wait(0.0001) == "1ms"


def test_service_names_are_quoted_in_the_path():
    transport = ScriptedTransport(ok('[{"Node": {}, "Service": {}}]'))
    ConsulClient("http://c:8500", transport).health_service("a b/../x?y")
    assert transport.calls[0]["url"] == "http://c:8500/v1/health/service/a%20b%2F..%2Fx%3Fy"


# -- errors --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer, error, words", [
    (TransportError("ConnectionRefusedError: [Errno 111] Connection refused"), ConsulUnavailable,
     ["http://127.0.0.1:1", "did not answer", "Connection refused"]),
    ((403, "Permission denied", {}), ConsulForbidden, ["403", "token", "missing"]),
    ((429, "Your IP is issuing too many concurrent connections", {}), ConsulRateLimited, ["429", "too many"]),
    ((500, "No cluster leader", {}), ConsulServerError, ["500", "No cluster leader"]),
    ((503, "", {}), ConsulServerError, ["503"]),
    ((404, "not found", {}), ConsulBadAnswer, ["404", "Consul agent's HTTP API"]),
    ((200, "<html>proxy</html>", {"x-consul-index": "1"}), ConsulBadAnswer, ["not JSON", "proxy"]),
    ((200, "{}", {"x-consul-index": "abc"}), ConsulBadAnswer, ["X-Consul-Index", "abc"]),
    ((200, "{}", {"x-consul-index": "-3"}), ConsulBadAnswer, ["negative"]),
    ((200, "[]", {"x-consul-index": "1"}), ConsulBadAnswer, ["JSON object"]),
    ((200, '{"web": "notalist"}', {"x-consul-index": "1"}), ConsulBadAnswer, ["tags of 'web'"]),
    ((200, "{}", {"x-consul-index": "1"}), ConsulForbidden, ["not even 'consul'", "no ACL token"]),
])
def test_error_mapping_of_the_catalog_read(answer, error, words):
    client = ConsulClient("http://127.0.0.1:1", ScriptedTransport(answer))
    with pytest.raises(error) as caught:
        client.catalog_services()
    assert isinstance(caught.value, ConsulError)
    for word in words:
        assert word in str(caught.value)
    assert caught.value.url.startswith("http://127.0.0.1:1/v1/catalog/services")


def test_forbidden_with_a_token_says_it_lacks_rights_and_never_shows_it():
    client = ConsulClient("http://c:8500", ScriptedTransport((403, f"ACL not found for {TOKEN}", {})), token=TOKEN)
    with pytest.raises(ConsulForbidden) as caught:
        client.health_service("web")
    assert "refused or lacks the rights" in str(caught.value)
    assert TOKEN not in str(caught.value) and "<redacted>" in str(caught.value)


def test_transport_reason_is_redacted_too():
    client = ConsulClient("http://c:8500", ScriptedTransport(TransportError(f"odd {TOKEN}")), token=TOKEN)
    with pytest.raises(ConsulUnavailable) as caught:
        client.health_state_any()
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize("method, body", [
    ("health_service", '{"a": 1}'), ("health_service", "[1, 2]"), ("health_state_any", '"x"'),
    ("health_state_any", "[null]"),
])
def test_wrong_json_shapes_are_bad_answers(method, body):
    client = ConsulClient("http://c:8500", ScriptedTransport(ok(body)))
    call = getattr(client, method)
    with pytest.raises(ConsulBadAnswer):
        call("web") if method == "health_service" else call()


def test_long_bodies_are_cut_in_messages():
    client = ConsulClient("http://c:8500", ScriptedTransport((500, "x" * 5000, {})))
    with pytest.raises(ConsulServerError) as caught:
        client.health_state_any()
    assert len(str(caught.value)) < 400


# -- token resolution ------------------------------------------------------------------------------------------
def test_token_precedence(tmp_path):
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    env = {"CONSUL_HTTP_TOKEN": "from-env"}
    assert resolve_token("explicit", str(path), env) == "explicit"
    assert resolve_token(None, str(path), env) == TOKEN
    assert resolve_token("", str(path), env) == TOKEN
    assert resolve_token(None, None, env) == "from-env"
    assert resolve_token(None, None, {"CONSUL_HTTP_TOKEN": "  "}) is None
    assert resolve_token(None, None, {}) is None


def test_unreadable_or_empty_token_file_fails_without_falling_back(tmp_path):
    env = {"CONSUL_HTTP_TOKEN": "from-env"}
    with pytest.raises(ValidationError) as caught:
        resolve_token(None, str(tmp_path / "missing"), env)
    assert "cannot be read" in str(caught.value) and "missing" in str(caught.value)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValidationError, match="is empty"):
        resolve_token(None, str(empty), env)


# -- blocking queries -----------------------------------------------------------------------------------------
class FakeClock:
    """A clock that only moves when the code under test sleeps (or a fake request takes time)."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


class FakeClient:
    """Returns scripted (index, data) answers and records the index / wait of every read."""

    def __init__(self, clock, answers, duration=0.0):
        self.clock = clock
        self.answers = list(answers)
        self.duration = duration
        self.calls = []

    def read(self, path, params=None, index=None, wait=None, stale=None):
        self.calls.append({"path": path, "index": index, "wait": wait, "stale": stale})
        self.clock.now += self.duration
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        index, data = answer
        return ConsulAnswer(data=data, index=index, url="http://c/v1" + path)


def query_with(answers, duration=0.0, **kwargs):
    clock = FakeClock()
    client = FakeClient(clock, answers, duration)
    kwargs.setdefault("wait", 300)
    query = BlockingQuery(client, "/v1/health/state/any", clock=clock, sleep=clock.sleep, **kwargs)
    return query, client, clock


def test_first_read_is_plain_then_it_blocks_on_the_last_index():
    query, client, _unused = query_with([(10, "a"), (12, "b")])
    first, second = query.poll(), query.poll()
    assert [call["index"] for call in client.calls] == [None, 10]
    assert [call["wait"] for call in client.calls] == [None, 300]
    assert (first.changed, first.data, second.changed, second.index) == (True, "a", True, 12)


def test_same_index_is_a_spurious_wakeup():
    query, client, _unused = query_with([(10, "a"), (10, "a"), (10, "a"), (11, "b")])
    results = [query.poll() for _unused in range(4)]
    assert [result.changed for result in results] == [True, False, False, True]
    assert [call["index"] for call in client.calls] == [None, 10, 10, 10]


def test_index_going_backwards_resets_to_a_plain_read():
    query, client, _unused = query_with([(50, "a"), (60, "b"), (5, "c"), (5, "c"), (7, "d")])
    results = [query.poll() for _unused in range(5)]
    assert [call["index"] for call in client.calls] == [None, 50, 60, None, 5]
    assert [(result.changed, result.reset) for result in results] == [
        (True, None), (True, None), (True, "backwards"), (False, None), (True, None)]


def test_index_zero_resets_and_is_never_sent():
    query, client, _unused = query_with([(10, "a"), (0, "b"), (0, "c"), (3, "d")])
    results = [query.poll() for _unused in range(4)]
    assert [call["index"] for call in client.calls] == [None, 10, None, None]
    assert [result.reset for result in results] == [None, "zero", "zero", None]
    assert all(result.changed for result in results)


def test_an_always_returning_query_cannot_spin():
    answers = [(0, "x")] * 50
    query, client, clock = query_with(answers, min_interval=0.25, burst=1)
    start = clock.now
    for _unused in range(50):
        query.poll()
    assert clock.now - start >= 49 * 0.25
    assert clock.sleeps == [0.25] * 49


def test_a_burst_starts_at_once_then_the_rate_is_capped():
    answers = [(0, "x")] * 50
    query, client, clock = query_with(answers, min_interval=0.25, burst=5)
    start = clock.now
    for _unused in range(50):
        query.poll()
    assert clock.sleeps[:1] == [0.25] and len(clock.sleeps) == 45, "the first 5 polls start without waiting"
    assert clock.now - start >= 45 * 0.25
    assert len(client.calls) == 50


def test_a_poll_after_a_real_change_is_never_delayed():
    answers = [(1, "a")] + [(1, "a")] * 8 + [(2, "b"), (3, "c"), (4, "d"), (4, "d")]
    query, client, clock = query_with(answers, min_interval=0.5, burst=2)
    for _unused in range(9):
        query.poll()                       # 8 spurious wake-ups drain the bucket
    spent = len(clock.sleeps)
    assert spent >= 6
    for _unused in range(3):
        assert query.poll().changed        # 2, 3, 4: the poll after each change starts at once
    assert len(clock.sleeps) == spent + 1, "only the poll after the first change waited (it followed a spurious one)"
    query.poll()                           # after 4 (a change) the next starts at once, then is spurious
    assert len(clock.sleeps) == spent + 1


def test_time_spent_blocking_counts_towards_the_interval():
    query, client, clock = query_with([(1, "a"), (2, "b"), (3, "c")], duration=5.0, min_interval=1.0)
    for _unused in range(3):
        query.poll()
    assert clock.sleeps == []


def test_errors_keep_the_index_and_are_paced_too():
    query, client, clock = query_with([(10, "a"), ConsulServerError("500"), ConsulServerError("500"), (10, "a")],
                                      min_interval=0.5, burst=1)
    query.poll()
    for _unused in range(2):
        with pytest.raises(ConsulServerError):
            query.poll()
    result = query.poll()
    assert [call["index"] for call in client.calls] == [None, 10, 10, 10]
    assert result.changed is False
    assert clock.sleeps == [0.5, 0.5, 0.5]


def test_no_answer_makes_the_next_poll_a_plain_read():
    """A restarted agent may have a smaller index: blocking on the old one would wait out ``wait``."""
    query, client, clock = query_with([(50, "a"), ConsulUnavailable("down"), (7, "b"), (8, "c")], burst=1)
    query.poll()
    with pytest.raises(ConsulUnavailable):
        query.poll()
    after = query.poll()
    query.poll()
    assert [call["index"] for call in client.calls] == [None, 50, None, None]  # 7 < 50: reset, read afresh
    assert (after.changed, after.reset) == (True, "backwards")


def test_missing_index_header_is_a_bad_answer():
    query, _unused, _unused = query_with([(None, "a")])
    with pytest.raises(ConsulBadAnswer, match="X-Consul-Index"):
        query.poll()


def test_wait_is_capped_and_stale_is_passed():
    query, client, _unused = query_with([(1, "a"), (2, "b")], wait=3600, stale=True)
    query.poll()
    query.poll()
    assert client.calls[1]["wait"] == MAX_WAIT and client.calls[1]["stale"] is True


@pytest.mark.parametrize("kwargs", [{"wait": 0}, {"wait": -1}, {"min_interval": -0.1}, {"burst": 0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        BlockingQuery(object(), "/v1/health/state/any", **kwargs)


def test_queries_share_a_client_but_not_state():
    clock = FakeClock()
    client = FakeClient(clock, [(5, "h"), (9, "c"), (6, "h2")])
    health = BlockingQuery(client, "/v1/health/state/any", clock=clock, sleep=clock.sleep)
    catalog = BlockingQuery(client, "/v1/catalog/services", clock=clock, sleep=clock.sleep)
    health.poll()
    catalog.poll()
    health.poll()
    assert (health.index, catalog.index) == (6, 9)
    assert [call["index"] for call in client.calls] == [None, None, 5]


def test_with_a_real_client_over_the_scripted_transport():
    transport = ScriptedTransport(ok("[]", "3"), ok("[]", "3"), ok("[]", "4"))
    clock = FakeClock()
    query = BlockingQuery(ConsulClient("http://c:8500", transport), "/v1/health/state/any", wait=10, clock=clock,
                          sleep=clock.sleep)
    assert [query.poll().changed for _unused in range(3)] == [True, False, True]
    assert [call["url"] for call in transport.calls] == [
        "http://c:8500/v1/health/state/any",
        "http://c:8500/v1/health/state/any?index=3&wait=10000ms",
        "http://c:8500/v1/health/state/any?index=3&wait=10000ms"]


# -- the by-node full read's endpoints --------------------------------------------------------------------
def test_node_services_of_a_node_that_left_is_no_services():
    transport = ScriptedTransport(ok('{"Node": null, "Services": null}'))
    answer = ConsulClient("http://c:8500", transport).catalog_node_services("gone node")
    assert transport.calls[0]["url"] == "http://c:8500/v1/catalog/node-services/gone%20node"
    assert answer.data == {"Node": {}, "Services": []}


@pytest.mark.parametrize("body", ['[]', '{"Node": {}, "Services": {"id": {}}}', '{"Node": "n", "Services": []}',
                                  '{"Node": {}, "Services": [1]}'])
def test_node_services_of_another_shape_is_a_bad_answer(body):
    with pytest.raises(ConsulBadAnswer, match="node-services"):
        ConsulClient("http://c:8500", ScriptedTransport(ok(body))).catalog_node_services("n1")


def test_catalog_nodes_must_be_a_list_of_objects():
    assert ConsulClient("http://c:8500", ScriptedTransport(ok('[{"Node": "n1"}]'))).catalog_nodes().data == [
        {"Node": "n1"}]
    with pytest.raises(ConsulBadAnswer, match="list of nodes"):
        ConsulClient("http://c:8500", ScriptedTransport(ok('{"n1": {}}'))).catalog_nodes()


# -- ACL filtering and TLS failures (the real agent: tests/integration/test_consul_tls_acl.py) -----------------
CONSUL_ENTRY = '[{"Node": {"Node": "s1"}, "Service": {"ID": "consul", "Service": "consul"}, "Checks": []}]'


def test_an_empty_service_stands_when_the_consul_service_has_instances():
    """A service that lost its last instance between two reads (a real agent will not time that on demand)."""
    transport = ScriptedTransport(ok("[]"), ok(CONSUL_ENTRY))
    client = ConsulClient("http://c:8500", transport, token=TOKEN, datacenter="dc2")
    assert client.health_service("web").data == []
    assert [call["url"] for call in transport.calls] == ["http://c:8500/v1/health/service/web?dc=dc2",
                                                         "http://c:8500/v1/health/service/consul?dc=dc2"]


@pytest.mark.parametrize("nodes, right", [("[]", "node:read"), ('[{"Node": "s1"}]', "service:read")])
def test_an_empty_service_and_an_empty_consul_service_are_forbidden(nodes, right):
    transport = ScriptedTransport(ok("[]"), ok("[]"), ok(nodes))
    with pytest.raises(ConsulForbidden) as caught:
        ConsulClient("http://c:8500", transport, token=TOKEN).health_service("web")
    assert f"the ACL token lacks {right}" in str(caught.value) and TOKEN not in str(caught.value)
    assert caught.value.url == "http://c:8500/v1/health/service/web"


def test_a_service_with_instances_costs_no_extra_request():
    transport = ScriptedTransport(ok(CONSUL_ENTRY.replace('"consul"', '"web"')))
    ConsulClient("http://c:8500", transport).health_service("web")
    assert len(transport.calls) == 1


def test_a_catalog_without_the_consul_service_is_forbidden_and_an_empty_node_list_too():
    with pytest.raises(ConsulForbidden, match="did not list the 'consul' service.*lacks service:read"):
        ConsulClient("http://c:8500", ScriptedTransport(ok('{"web": []}')), token=TOKEN).catalog_services()
    with pytest.raises(ConsulForbidden, match="listed no node at all.*no ACL token was sent"):
        ConsulClient("http://c:8500", ScriptedTransport(ok("[]"))).catalog_nodes()


@pytest.mark.parametrize("reason, words", [
    ("SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local "
     "issuer certificate (_ssl.c:1006)", ["certificate verification failed", "consul_ca_path", "CONSUL_CACERT"]),
    ("SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: IP address mismatch, "
     "certificate is not valid for '127.0.0.2'. (_ssl.c:1006)", ["does not name the host"]),
    ("SSLError: [SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate (_ssl.c:2580)",
     ["refused the client certificate", "consul_client_cert", "CONSUL_CLIENT_KEY"]),
    ("str: SSLV3_ALERT_BAD_CERTIFICATE", ["refused the client certificate"]),   # through ansible's open_url
    ("SSLError: [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required (_ssl.c:2580)",
     ["refused the client certificate"]),
    ("SSLError: [SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)", ["does not speak TLS"]),
])
def test_tls_failures_name_their_cause(reason, words):
    with pytest.raises(ConsulTLSError) as caught:
        ConsulClient("https://c:8501", ScriptedTransport(TransportError(reason))).health_state_any()
    assert isinstance(caught.value, ConsulUnavailable)
    for word in words:
        assert word in str(caught.value)


def test_other_transport_failures_are_not_called_tls():
    with pytest.raises(ConsulUnavailable) as caught:
        ConsulClient("http://c:8500", ScriptedTransport(TransportError("ConnectionRefusedError: refused"))).health_state_any()
    assert not isinstance(caught.value, ConsulTLSError) and tls_hint("ConnectionRefusedError: refused") is None


def test_plain_http_on_the_https_port_says_so():
    answer = (400, "Client sent an HTTP request to an HTTPS server.\n", {})
    with pytest.raises(ConsulBadAnswer, match="use an https:// URL"):
        ConsulClient("http://c:8501", ScriptedTransport(answer)).health_state_any()


# -- stale answers bounded (max_stale) -------------------------------------------------------------------
# ScriptedTransport stands in for the headers of a server cut off from its leader; a real follower that
# lost its leader is in tests/integration/test_consul_stale_bound.py.
def stale_answer(body, index, last_contact, known_leader="true"):
    headers = {"x-consul-index": index, "x-consul-knownleader": known_leader}
    if last_contact is not None:
        headers["x-consul-lastcontact"] = last_contact
    return 200, body, headers


@pytest.mark.parametrize("last_contact, known_leader", [("7300", "true"), ("10", "false"), ("soon", "true")])
def test_a_too_stale_answer_is_read_again_from_the_leader(last_contact, known_leader):
    transport = ScriptedTransport(stale_answer('[{"CheckID": "old"}]', "41", last_contact, known_leader),
                                  stale_answer('[{"CheckID": "new"}]', "45", "0"))
    seen = []
    client = ConsulClient("http://c:8500", transport, stale=True, max_stale=2,
                          on_too_stale=lambda url, seconds: seen.append((url, seconds)))
    answer = client.health_state_any(index=40, wait=60)
    assert [call["url"] for call in transport.calls] == [
        "http://c:8500/v1/health/state/any?stale=&index=40&wait=60000ms", "http://c:8500/v1/health/state/any"]
    assert transport.calls[1]["timeout"] == 10.0  # a plain read: it does not block
    expected = 7.3 if last_contact == "7300" else float("inf")
    assert (answer.data, answer.index, answer.last_contact, answer.reread_after) == (
        [{"CheckID": "new"}], 45, 0.0, expected)
    assert seen == [(transport.calls[0]["url"], expected)]


def test_the_leader_read_after_a_too_stale_answer_keeps_the_reads_hook():
    transport = ScriptedTransport(stale_answer('[{"CheckID": "old", "Output": "x"}]', "41", "7300"),
                                  stale_answer('[{"CheckID": "new", "Output": "y"}]', "45", "0"))
    client = ConsulClient("http://c:8500", transport, stale=True, max_stale=2)
    answer = client.health_state_any(index=40, object_hook=lambda obj: {"CheckID": obj["CheckID"]})
    assert len(transport.calls) == 2 and answer.data == [{"CheckID": "new"}]


@pytest.mark.parametrize("max_stale, last_contact", [(2, "2000"), (2, None), (0, "900000"), (None, "900000")])
def test_an_answer_within_the_bound_or_without_a_bound_is_used(max_stale, last_contact):
    transport = ScriptedTransport(stale_answer("[]", "41", last_contact))
    answer = ConsulClient("http://c:8500", transport, stale=True, max_stale=max_stale).health_state_any(index=40)
    assert len(transport.calls) == 1
    assert answer.last_contact == (None if last_contact is None else int(last_contact) / 1000)
    assert answer.reread_after is None


def test_a_read_without_stale_is_never_read_again():
    transport = ScriptedTransport(stale_answer("[]", "41", "9000"))
    ConsulClient("http://c:8500", transport, stale=False, max_stale=2).health_state_any()
    assert len(transport.calls) == 1


def test_a_failed_leader_read_says_how_stale_the_answer_was():
    transport = ScriptedTransport(stale_answer("[]", "41", "7300", "false"),
                                  (500, "No cluster leader", {}))
    client = ConsulClient("http://c:8500", transport, stale=True, max_stale=2)
    with pytest.raises(ConsulServerError, match=r"No cluster leader.*knew no leader, above max_stale 2s"):
        client.health_state_any(index=40)


def test_after_a_too_stale_answer_the_polls_of_one_wait_go_to_the_leader():
    clock = FakeClock()

    class Client(FakeClient):
        def read(self, path, params=None, index=None, wait=None, stale=None):
            answer = super().read(path, params, index, wait, stale)
            stale_one = self.calls[-1]["index"] == 11
            return ConsulAnswer(answer.data, answer.index, answer.url, last_contact=0.0 if stale_one else 0.2,
                                reread_after=9.0 if stale_one else None)

    client = Client(clock, [(10, "a"), (11, "b"), (12, "c"), (13, "d"), (14, "e")], duration=40.0)
    query = BlockingQuery(client, "/v1/health/state/any", wait=30, stale=None, clock=clock, sleep=clock.sleep)
    results = [query.poll() for _unused in range(5)]
    # the answer to index 11 was re-read (it ended at +120 s): the polls that start before +150 s ask the
    # leader (stale=False), the next one (+160 s) any server again
    assert [call["stale"] for call in client.calls] == [None, None, None, False, None]
    assert [result.reread_after for result in results] == [None, None, 9.0, None, None]


# -- a token in clear text over a network (issue 19) -------------------------------------------------------
@pytest.mark.parametrize("url, token, warned", [
    ("http://10.0.0.5:8500", TOKEN, True),
    ("http://consul.example.internal:8500", TOKEN, True),
    ("http://[2001:db8::1]:8500", TOKEN, True),
    ("https://10.0.0.5:8501", TOKEN, False),
    ("http://127.0.0.1:8500", TOKEN, False),
    ("http://127.8.9.10:8500", TOKEN, False),
    ("http://[::1]:8500", TOKEN, False),
    ("http://LOCALHOST:8500", TOKEN, False),
    ("http://10.0.0.5:8500", None, False),
])
def test_a_token_over_plain_http_to_a_host_that_is_not_loopback_is_warned_about(url, token, warned):
    warning = ConsulClient(url, ScriptedTransport(ok()), token=token).cleartext_token_warning()
    assert bool(warning) is warned
    if warning:
        assert "clear text" in warning and url in warning and TOKEN not in warning


def test_the_watcher_warns_once_at_start_about_a_token_in_clear_text(tmp_path, caplog):
    from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as watcher_settings
    from ansible_collections.swallowkeeper.dyups.plugins.watcher.consul_source import ConsulSource
    from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics

    token_file = tmp_path / "consul.token"
    token_file.write_text(TOKEN + "\n")
    settings = watcher_settings.build({"consul_url": "http://10.0.0.5:8500", "consul_token_file": str(token_file),
                                       "status_listen": ""}, environ={})
    with caplog.at_level("WARNING", logger="swallowkeeper.watcher"):
        source = ConsulSource(settings, Metrics())   # builds its clients; sends nothing yet
    source.transport.close()
    warnings = [record.getMessage() for record in caplog.records if "clear text" in record.getMessage()]
    assert len(warnings) == 1 and "http://10.0.0.5:8500" in warnings[0] and TOKEN not in caplog.text
