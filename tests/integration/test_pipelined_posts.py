"""Pipelined POSTs and DELETEs (DyupsClient.apply_many on KeepAliveTransport.many, plugins/module_utils/
_http_pipeline.py) against each real interface (the guarded Lua flavor and a guarded Tengine: the secret
header goes with every pipelined request).

2 500 upstreams cross nginx's ``keepalive_requests`` (1 000) twice, so the exchange goes on over new
connections where nginx closed the old one; then DELETEs and POSTs mixed in one batch, one DELETE of an
upstream the interface does not hold; every outcome is what update()/delete() one at a time would give, and
``/detail`` holds exactly what was sent. A server the wire contract refuses on the Lua flavor (a host name
that does not resolve) is a DyupsRejected of its own while the requests around it are done.
"""

from __future__ import annotations

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_options import secret_headers
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import DyupsError, DyupsRejected
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._http_keepalive import KeepAliveTransport
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream

COUNT = 2500


def upstream(number, port=8001, prefix="Pipe"):
    host = f"127.0.{number // 250}.{number % 250 + 1}"
    return build_upstream(f"{prefix}{number}", [f"{host}:{port}", f"{host}:{port + 1} weight=3"], [])


def held(client):
    return {name: sorted(server.spec() for server in servers) for name, servers in client.detail().items()}


def test_thousands_of_changes_pipelined_across_closed_connections(guarded_dyups_server):
    server = guarded_dyups_server
    transport = KeepAliveTransport(secret_headers(server.secret_file))
    client = DyupsClient(server.api_url, transport, timeout=10)
    try:
        first = [upstream(number) for number in range(COUNT)]
        outcomes = client.apply_many([(item.name, item) for item in first])
        assert outcomes == [True] * COUNT
        assert held(client) == {item.name: sorted(s.spec() for s in item.servers) for item in first}

        # DELETEs and new POSTs in one batch, and a DELETE of a name the interface does not hold
        changed = [upstream(number, port=9001) for number in range(0, COUNT, 2)]
        gone = [f"Pipe{number}" for number in range(1, COUNT, 2)]
        outcomes = client.apply_many([(item.name, item) for item in changed]
                                     + [(name, None) for name in gone] + [("PipeNever", None)])
        assert outcomes == [True] * len(changed) + [True] * len(gone) + [False]
        assert held(client) == {item.name: sorted(s.spec() for s in item.servers) for item in changed}
        # what the pipelined exchange left behind: no connection busy
        assert transport.connections()[1] == 0
    finally:
        transport.close()


@pytest.mark.parametrize("dyups_server", ["lua"], indirect=True)
def test_a_refused_request_in_the_middle_is_its_own_error(dyups_server):
    client = DyupsClient(dyups_server.api_url, KeepAliveTransport(), timeout=10)
    unresolvable = build_upstream("PipeBad", ["no-such-host.invalid:80"], [])
    batch = [(f"PipeOk{number}", upstream(number, prefix="PipeOk")) for number in range(20)]
    batch.insert(10, ("PipeBad", unresolvable))
    outcomes = client.apply_many(batch)
    assert [type(outcome) for outcome in outcomes[:10] + outcomes[11:]] == [bool] * 20
    assert isinstance(outcomes[10], DyupsRejected), outcomes[10]
    assert isinstance(outcomes[10], DyupsError) and "PipeBad" in str(outcomes[10])
    assert sorted(held(client)) == sorted(name for name, _item in batch if name != "PipeBad")
