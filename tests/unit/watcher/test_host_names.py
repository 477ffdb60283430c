"""Host-name resolution alone (plugins/watcher/host_names.py); the Syncer's use of it: test_syncer.py."""

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher.host_names import HostNames


def test_servers_that_do_not_resolve_are_left_out_and_examined_at_every_call(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    names = HostNames(str(hosts))
    upstreams = {"A": build_upstream("A", ["localhost:80", "unknown.test:80"], ["keepalive 8"]),
                 "B": build_upstream("B", ["unknown.test:81"]),
                 "C": build_upstream("C", ["10.0.0.1:80"])}
    resolved, empty = names.resolvable(upstreams, ["D"])
    assert [server.host for server in resolved["A"].servers] == ["localhost"]
    assert resolved["A"].directive_lines() == ["keepalive 8;"]
    assert resolved["C"] is upstreams["C"] and "B" not in resolved
    assert empty == {"B", "D"} and names.names == {"A", "B"}
    assert sorted(item["what"] for item in names.skipped()) == ["server unknown.test:80 of upstream A",
                                                                "server unknown.test:81 of upstream B"]
    hosts.write_text("127.0.0.1 localhost unknown.test\n")   # DNS changed: nothing else did
    resolved, empty = names.resolvable(upstreams, [], changed=[])
    assert resolved["A"] is upstreams["A"] and resolved["B"] is upstreams["B"] and empty == set()
    assert names.skipped() == []
