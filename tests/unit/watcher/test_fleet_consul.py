"""fleet_consul.FleetKV.put: what each answer of Consul becomes, with the same wording and the same token
redaction as the watcher's reads (ConsulClient.status_error). The answers come from a scripted transport:
a real agent's 403 does not echo the token, which is the case the redaction exists for. The real exchange
(sessions, the lock, transactions, an ACL token without the fleet's rights) is
tests/integration/test_watcher_fleet.py."""

from __future__ import annotations

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import (
    ConsulBadAnswer, ConsulForbidden, ConsulRateLimited, ConsulServerError, ConsulUnavailable, TransportError)
from ansible_collections.swallowkeeper.dyups.plugins.watcher.fleet_consul import FleetKV
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics
from ansible_collections.swallowkeeper.dyups.plugins.watcher.settings import Settings

TOKEN = "7d2e9a41-fleet-secret"


class Scripted:
    """One scripted answer (status, body) or exception per call; records the calls."""

    def __init__(self, answer):
        self.answer = answer
        self.calls = []

    def __call__(self, method, url, body, timeout, extra_headers=None):
        self.calls.append((method, url, dict(extra_headers or {})))
        if isinstance(self.answer, Exception):
            raise self.answer
        status, text = self.answer
        return status, text.encode(), {}


def fleet_kv(tmp_path, answer):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    kv = FleetKV(Settings(values={"consul_token_file": str(token_file), "fleet_share": True}), Metrics())
    kv.transport.close()
    kv.transport = Scripted(answer)
    return kv


@pytest.mark.parametrize("answer,error,words", [
    ((403, f"ACL not found: {TOKEN}"), ConsulForbidden, ["PUT", "403", "key_prefix", "session_prefix", "lacks"]),
    ((429, f"slow down {TOKEN}"), ConsulRateLimited, ["PUT", "429", "retry later"]),
    ((500, f"rpc error {TOKEN}"), ConsulServerError, ["PUT", "500", "rpc error"]),
    ((404, "no such session"), ConsulBadAnswer, ["PUT", "404", "no such session"]),
    ((200, f"<html>{TOKEN}</html>"), ConsulBadAnswer, ["PUT", "not JSON"]),
    (TransportError("connection refused"), ConsulUnavailable, ["PUT", "did not answer", "connection refused"]),
])
def test_an_answer_that_is_not_200_or_409_is_an_error_that_never_shows_the_token(tmp_path, answer, error, words):
    kv = fleet_kv(tmp_path, answer)
    with pytest.raises(error) as raised:
        kv.put("/v1/session/create", body={"Name": "w"})
    text = str(raised.value)
    assert TOKEN not in text
    assert all(word in text for word in words), text
    method, _url, headers = kv.transport.calls[0]
    assert method == "PUT" and headers == {"X-Consul-Token": TOKEN}   # the token travels in the header only


def test_a_renew_of_a_session_consul_no_longer_knows_says_so(tmp_path):
    assert fleet_kv(tmp_path, (404, "Session id 'x' not found")).renew("x") is False
    assert fleet_kv(tmp_path, (200, "[{}]")).renew("x") is True


def test_a_rolled_back_transaction_is_none_and_a_done_one_its_results(tmp_path):
    assert fleet_kv(tmp_path, (409, '{"Errors": [{"OpIndex": 0, "What": "cas failed"}]}')).txn([]) is None
    assert fleet_kv(tmp_path, (200, '{"Results": [{"KV": {}}], "Errors": null}')).txn([]) == [{"KV": {}}]
