"""Host-name resolution alone (plugins/watcher/host_names.py); the Syncer's use of it: test_syncer.py."""

import socket
import threading
import time

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher.host_names import HostNames
from ansible_collections.swallowkeeper.dyups.plugins.watcher.lookup_threads import LookupThreads
from tests.support.waiting import wait_for


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


class SlowResolver:
    """A getaddrinfo stand-in (a slow DNS server is an error path the machine's resolver will not produce on
    demand): the hosts in ``slow`` answer only when ``release`` is set, the others at once."""

    def __init__(self, slow):
        self.slow = set(slow)
        self.release = threading.Event()
        self.asked = []

    def __call__(self, host, _port, _family=0, _type=0):
        self.asked.append(host)
        if host in self.slow:
            self.release.wait(30)
        return [(socket.AF_INET, socket.SOCK_STREAM, 0, "", ("10.1.2.3", 0))]


def test_slow_host_names_hold_a_sync_for_the_timeout_in_all_then_are_left_out_with_the_reason():
    resolver = SlowResolver({f"slow{number}.test" for number in range(40)})
    names = HostNames(None, timeout=0.5, lookups=LookupThreads(resolver, max_threads=16))
    upstreams = {f"S{number}": build_upstream(f"S{number}", [f"slow{number}.test:80"]) for number in range(10)}
    upstreams["F"] = build_upstream("F", ["fast.test:80", "slow0.test:81"])
    try:
        started = time.monotonic()
        resolved, empty = names.resolvable(upstreams, [])
        took = time.monotonic() - started
        assert took < 1.5, f"11 host names, 10 slow, held the sync {took:.1f}s with a 0.5s timeout"
        assert list(resolved) == ["F"] and [s.host for s in resolved["F"].servers] == ["fast.test"]
        assert empty == {f"S{number}" for number in range(10)}
        reasons = {item["what"]: item["why"] for item in names.skipped()}
        assert "did not resolve within 0.5s" in reasons["server slow0.test:81 of upstream F"]
        assert names.lookups.running() == 10
        names.resolvable(upstreams, [])      # the next sync: the lookups still running are not started twice
        assert resolver.asked.count("slow0.test") == 1 and names.lookups.running() == 10
        many = {f"S{number}": build_upstream(f"S{number}", [f"slow{number}.test:80"]) for number in range(40)}
        started = time.monotonic()
        resolved, empty = names.resolvable(many, [])   # more slow names than threads: 16 threads, 0.5s
        assert time.monotonic() - started < 1.5 and resolved == {} and len(empty) == 40
        assert names.lookups.running() == 16
        assert any("did not resolve within" in item["why"] for item in names.skipped())
    finally:
        resolver.release.set()
    wait_for(lambda: names.lookups.running() == 0, "the lookups end once DNS answers", timeout=10)
    resolved, empty = names.resolvable(upstreams, [])
    assert len(resolved) == 11 and empty == set() and names.skipped() == []
