"""Where a server may point, and the Meta bounds (_server_policy.py): issue 19 findings 1 and 5.

The end-to-end attack (a real Consul, a real proxy of both flavors): tests/integration/test_registrant_addresses.py.
"""

import ipaddress

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_mapping import MappingOptions, map_services
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._server_policy import (
    ServerPolicy, host_networks, operator_policy, read_host_networks)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import parse_server
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.modules import dyups_upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as watcher_settings
from ansible_collections.swallowkeeper.dyups.plugins.watcher.host_names import HostNames
from tests.unit.test_consul_mapping import entry
from tests.unit.test_dyups_module_parts import params

OWN = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32"),
       ipaddress.ip_network("192.0.2.2/32"), ipaddress.ip_network("::1/128"), ipaddress.ip_network("fd00::2/128"))

# (server, the words its reason holds): every spelling of finding 1 that the server rules let through
REFUSED = [
    ("127.0.0.1:18882", "loopback"),
    ("127.255.0.9:80", "loopback"),
    ("[::1]:18883", "loopback"),
    ("localhost:8500", "host name"),
    ("0.0.0.0:22", "unspecified"),
    ("[::]:22", "unspecified"),
    ("169.254.169.254:80", "link-local"),
    ("[fe80::1]:80", "link-local"),
    ("224.0.0.1:80", "multicast"),
    ("[ff02::1]:80", "multicast"),
    ("255.255.255.255:80", "broadcast"),
    ("[::ffff:127.0.0.1]:80", "IPv4-mapped"),
    ("[::ffff:7f00:1]:80", "IPv4-mapped"),
    ("[0:0:0:0:0:ffff:a9fe:a9fe]:80", "IPv4-mapped"),
    ("0x7f000001:80", "spelling"),
    ("0x7f.0.0.0x1:80", "spelling"),
    ("192.0.2.2:80", "address of this host"),
    ("[fd00::2]:80", "address of this host"),
    ("10.0.0.1:80 weight=101", "above max_weight 100"),
    ("10.0.0.1:80 max_fails=0", "max_fails=0"),
]
# short IPv4 forms never reach the policy: the server rules refuse them
SHORT_FORMS = ["127.1:80", "0:80", "2130706433:80", "0177.0.0.1:80", "0x7f.1:80"]


@pytest.mark.parametrize("spec,why", REFUSED)
def test_what_a_registrant_must_not_reach_is_refused(spec, why):
    reason = ServerPolicy(own=OWN).problem(parse_server(spec))
    assert reason is not None and why in reason, reason


@pytest.mark.parametrize("spec", SHORT_FORMS)
def test_short_ipv4_forms_are_refused_by_the_server_rules(spec):
    with pytest.raises(ValidationError):
        parse_server(spec)


def test_ordinary_addresses_and_bounds_pass():
    policy = ServerPolicy(own=OWN)
    for spec in ("10.0.0.1:80", "198.51.100.7:8080 weight=100 max_fails=3", "[2001:db8::1]:80", "192.0.2.3:80"):
        assert policy.problem(parse_server(spec)) is None, spec
    assert ServerPolicy(max_weight=10000, allow_zero_max_fails=True).problem(
        parse_server("10.0.0.1:80 weight=10000 max_fails=0")) is None


def test_allowed_networks_lift_a_class_only_from_inside_it():
    loopback = ServerPolicy(["127.0.0.0/8"], own=OWN)
    assert loopback.problem(parse_server("127.0.0.1:80")) is None
    assert loopback.problem(parse_server("[::ffff:127.0.0.1]:80")) is None     # the same address
    assert "outside allowed_networks" in loopback.problem(parse_server("10.0.0.1:80"))
    assert "outside allowed_networks" in loopback.problem(parse_server("[::1]:80"))
    everything = ServerPolicy(["0.0.0.0/0", "::/0"], own=OWN)
    for spec in ("127.0.0.1:80", "169.254.169.254:80", "192.0.2.2:80", "[::1]:80"):
        assert everything.problem(parse_server(spec)) is not None, spec          # 0.0.0.0/0 lifts no class
    assert everything.problem(parse_server("10.0.0.1:80")) is None
    assert "address of this host" in ServerPolicy(["192.0.2.0/24"], own=OWN).problem(parse_server("192.0.2.2:80"))
    assert ServerPolicy(["192.0.2.2/32"], own=OWN).problem(parse_server("192.0.2.2:80")) is None
    narrow = ServerPolicy(["127.0.0.2/32"], own=OWN)
    assert narrow.problem(parse_server("127.0.0.2:80")) is None
    assert narrow.problem(parse_server("127.0.0.1:80")) is not None


def test_denied_networks_win():
    policy = ServerPolicy(["10.0.0.0/8"], ["10.1.0.0/16"])
    assert "denied_networks" in policy.problem(parse_server("10.1.2.3:80"))
    assert policy.problem(parse_server("10.2.0.1:80")) is None
    assert "denied_networks" in ServerPolicy(["127.0.0.0/8"], ["127.0.0.1/32"]).problem(parse_server("127.0.0.1:80"))


def test_host_names_only_when_allowed():
    assert ServerPolicy(allow_host_names=True).problem(parse_server("app.example.internal:80")) is None
    assert "host name" in ServerPolicy().problem(parse_server("app.example.internal:80"))
    # a numeric spelling is never a name
    assert "spelling" in ServerPolicy(allow_host_names=True).problem(parse_server("0x7f000001:80"))


@pytest.mark.parametrize("bad", [["10.0.0.0/33"], ["not-a-cidr"], ["10.0.0.1/8x"]])
def test_bad_networks_are_refused_naming_the_option(bad):
    with pytest.raises(ValueError, match="allowed_networks"):
        ServerPolicy(bad)
    with pytest.raises(watcher_settings.SettingsError, match="denied_networks"):
        watcher_settings.build({"denied_networks": bad}, environ={})


@pytest.mark.parametrize("bad", [0, 10001, -1])
def test_max_weight_is_checked(bad):
    with pytest.raises(watcher_settings.SettingsError, match="max_weight"):
        watcher_settings.build({"max_weight": bad}, environ={})


def test_host_networks_reads_the_kernels_local_routes(tmp_path):
    (tmp_path / "fib_trie").write_text(
        "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n"
        "     |-- 10.1.2.3\n        /32 host LOCAL\n     |-- 10.1.2.255\n        /32 link BROADCAST\n"
        "     |-- 127.0.0.0\n        /8 host LOCAL\n")
    (tmp_path / "if_inet6").write_text("fd000000000000000000000000000002 04 40 00 82     eth0\n"
                                       "00000000000000000000000000000001 01 80 10 80       lo\n")
    assert [str(net) for net in host_networks(str(tmp_path))] == ["10.1.2.3/32", "127.0.0.0/8", "::1/128",
                                                                  "fd00::2/128"]
    assert host_networks(str(tmp_path / "missing")) == ()


@pytest.mark.parametrize("mapped, ipv4", [("::ffff:10.0.0.0/104", "10.0.0.0/8"), ("::ffff:a00:0/104", "10.0.0.0/8"),
                                          ("::ffff:10.1.2.3", "10.1.2.3/32"), ("::ffff:0:0/96", "0.0.0.0/0")])
def test_ipv4_mapped_networks_are_the_ipv4_networks_they_map(mapped, ipv4):
    """Addresses are checked as the IPv4 they carry (rule 4), so a mapped entry must match them as IPv4."""
    policy = ServerPolicy(denied_networks=[mapped])
    assert [str(net) for net in policy.denied] == [ipv4]
    for host in ("10.1.2.3", "::ffff:10.1.2.3"):
        assert "is in denied_networks" in policy.problem_of_host(host), host
    assert policy.problem_of_host("198.51.100.7" if ipv4 != "0.0.0.0/0" else "2001:db8::7") is None
    allowed = ServerPolicy(allowed_networks=[mapped])
    assert allowed.problem_of_host("::ffff:10.1.2.3") is None and allowed.problem_of_host("10.1.2.3") is None
    assert watcher_settings.build({"denied_networks": [mapped]}, environ={}).policy.denied == policy.denied


def test_a_mapped_network_lifts_loopback_as_its_ipv4_network_does():
    assert ServerPolicy(allowed_networks=["::ffff:127.0.0.0/104"]).problem_of_host("127.0.0.1") is None
    assert ServerPolicy(denied_networks=["::/0"]).problem_of_host("::ffff:10.1.2.3") is None   # IPv6 only (docs)


FIB_TRIE = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.1.2.3\n        /32 host LOCAL\n"


def test_host_networks_that_cannot_be_read_come_with_a_warning(tmp_path):
    """Without the kernel's lists this host's own addresses are not refused: say so, naming the file."""
    networks, warning = read_host_networks(str(tmp_path / "missing"))
    assert networks == () and f"{tmp_path}/missing/fib_trie: No such file or directory" in warning
    assert "not refused" in warning and "denied_networks" in warning
    (tmp_path / "fib_trie").write_text(FIB_TRIE)
    assert read_host_networks(str(tmp_path)) == ((ipaddress.ip_network("10.1.2.3/32"),), None)  # no IPv6: no if_inet6
    (tmp_path / "if_inet6").mkdir()
    networks, warning = read_host_networks(str(tmp_path))
    assert networks == (ipaddress.ip_network("10.1.2.3/32"),) and f"{tmp_path}/if_inet6: Is a directory" in warning
    (tmp_path / "if_inet6").rmdir()
    (tmp_path / "fib_trie").write_text(FIB_TRIE.replace("10.1.2.3", "10.1.2.x"))
    assert "fib_trie: not the kernel's format" in read_host_networks(str(tmp_path))[1]


def test_the_mapping_skips_with_the_reason():
    health = {"Pay": [entry("Pay", "evil", 18882, address="127.0.0.1"),
                      entry("Pay", "meta", 80, address="169.254.169.254"),
                      entry("Pay", "node", 81, address="", node_address="::ffff:127.0.0.1"),
                      entry("Pay", "heavy", 82, meta={"dyups_weight": "10000"}),
                      entry("Pay", "sticky", 83, meta={"dyups_max_fails": "0"}),
                      entry("Pay", "ok", 84)]}
    result = map_services(health)
    assert result.upstream_specs()["Pay"]["servers"] == ["10.0.0.1:84"]
    reasons = {item["id"]: item["why"] for item in result.skipped}
    assert sorted(reasons) == ["evil", "heavy", "meta", "node", "sticky"]
    assert "loopback" in reasons["evil"] and "IPv4-mapped" in reasons["node"]
    opted = map_services(health, MappingOptions(policy={"allowed_networks": ["127.0.0.0/8", "10.0.0.0/8"]}))
    assert sorted(opted.upstream_specs()["Pay"]["servers"]) == ["10.0.0.1:84", "127.0.0.1:18882",
                                                                "[::ffff:127.0.0.1]:81"]


def test_the_watcher_checks_what_a_host_name_resolves_to(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 sneaky.test\n10.0.0.5 fine.test\n")
    names = HostNames(str(hosts), policy=ServerPolicy(allow_host_names=True))
    upstreams = {"A": build_upstream("A", ["sneaky.test:80", "fine.test:80"])}
    resolved, _empty = names.resolvable(upstreams, [])
    assert [server.host for server in resolved["A"].servers] == ["fine.test"]
    assert "resolves to 127.0.0.1" in names.skipped()[0]["why"]


def test_dyups_upstream_keeps_loopback_and_takes_the_lists():
    assert dyups_upstream.requested(params(name="Web", servers=["127.0.0.1:80 weight=1000 max_fails=0"]))
    with pytest.raises(ValidationError, match="denied_networks"):
        dyups_upstream.requested(params(name="Web", servers=["127.0.0.1:80"], denied_networks=["127.0.0.0/8"]))
    with pytest.raises(ValidationError, match="outside allowed_networks"):
        dyups_upstream.requested(params(name="Web", servers=["10.0.0.1:80"], allowed_networks=["192.168.0.0/16"]))
    with pytest.raises(ValidationError, match="allowed_networks"):
        dyups_upstream.requested(params(name="Web", servers=["10.0.0.1:80"], allowed_networks=["nope"]))
    assert operator_policy().problem(parse_server("app.example.internal:80")) is None
