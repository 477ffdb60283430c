"""Issue 19 findings 1 and 5: a Consul registrant points nginx where it must not reach, or takes a service.

Finding 1: an instance registered at ``127.0.0.1:<dyups interface port>`` (or ``[::1]``, ``localhost``,
``0.0.0.0``, ``169.254.169.254``, an IPv4-mapped or numeric spelling, an address of this host) made
nginx proxy public requests to its own dyups interface, from 127.0.0.1, which ``allow 127.0.0.1`` let
in: a POST through a public vhost rewrote an upstream. Finding 5: Meta ``dyups_weight=10000`` and
``dyups_max_fails=0`` were accepted from any registrant.

Here the watcher (real Consul 1.8.7, real proxy of both flavors) and consul_services run with their
default policy (``allowed_networks`` and ``allow_host_names`` left out): every such instance is skipped
with its reason, and the POST through the proxy changes nothing. The one backend that maps is at a
TEST-NET-2 address no request is ever sent to (traffic stays on loopback).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._server_policy import host_networks
from tests.integration.test_consul_services import run_module
from tests.integration.test_watcher import running_stack
from tests.support.consul import ConsulAgent
from tests.support.tengine import proxy_factory  # noqa: F401  (fixture)  # pylint: disable=unused-import
from tests.support.watcher import ENTRY

LEGIT = "198.51.100.7"  # TEST-NET-2: mapped, never contacted


def own_address():
    """An address of this host outside loopback and link-local (None when it has none)."""
    for network in host_networks():
        if network.prefixlen == network.max_prefixlen and not (network[0].is_loopback or network[0].is_link_local):
            return str(network[0])
    return None


def register_attacks(agent, port):
    """The registrations of finding 1 (service Payments) and 5 (service Shop); {instance id: expected reason}."""
    attacks = {
        "loopback": ("127.0.0.1", "loopback"),
        "loopback6": ("::1", "loopback"),
        "name": ("localhost", "host name 'localhost'"),
        "unspecified": ("0.0.0.0", "unspecified"),
        "metadata": ("169.254.169.254", "link-local"),
        "mapped": ("::ffff:127.0.0.1", "IPv4-mapped"),
        "mapped-hex": ("::ffff:7f00:1", "IPv4-mapped"),
        "numeric": ("0x7f000001", "spelling nginx's resolver reads"),
        "numeric-dots": ("0x7f.0.0.0x1", "spelling nginx's resolver reads"),
    }
    own = own_address()
    if own:
        attacks["own"] = (own, "an address of this host")
    for instance_id, (address, _why) in attacks.items():
        try:
            agent.register("Payments", instance_id, port=port, address=address)
        except RuntimeError as exc:  # the agent API refuses some (0.0.0.0); the catalog API takes them all
            assert "Invalid service address" in str(exc), exc
            agent.catalog_register(f"node-{instance_id}", address, "Payments", instance_id, port=port)
    agent.register("Shop", "legit", port=80, address=LEGIT)
    agent.register("Shop", "heavy", port=81, address=LEGIT, meta={"dyups_weight": "10000"})
    agent.register("Shop", "sticky", port=82, address=LEGIT, meta={"dyups_max_fails": "0"})
    expected = {instance_id: why for instance_id, (_address, why) in attacks.items()}
    expected.update(heavy="above max_weight 100", sticky="max_fails=0")
    return expected


def check_skips(skipped, expected):
    by_id = {item["id"]: item["why"] for item in skipped if item.get("id")}
    for instance_id, why in expected.items():
        assert instance_id in by_id and why in by_id[instance_id], (instance_id, by_id.get(instance_id), skipped)


def test_watcher_skips_what_a_registrant_must_not_reach(tmp_path, proxy_factory):  # noqa: F811
    upstream_file = tmp_path / "upstreams.conf"
    nginx = proxy_factory(workers=2, upstream_file=str(upstream_file))
    with running_stack(tmp_path, nginx, upstream_file) as stack:
        expected = register_attacks(stack.agent, nginx.api_port)
        # the watcher's defaults: no allowed_networks, no host names (the test stack opts in otherwise)
        watcher = stack.watcher(allowed_networks=None, allow_host_names=None)
        client = nginx.client()
        watcher.wait_for(lambda: "Shop" in client.detail(), "the legit instance reaches the interface")
        watcher.wait_for(lambda: len(watcher.status()["status"].get("skipped", [])) >= len(expected)
                         or "Payments" in client.detail(), "Payments mapped (or every attack skipped)")
        # The attack itself: a POST to the interface through the proxy, routed to Payments. With no
        # such upstream the proxy answers an error, and the interface never sees the request.
        status, text, _headers = nginx.request("/upstream/Victim", upstream="Payments", method="POST",
                                               body="server 127.0.0.1:9;")
        assert "Victim" not in client.detail(), f"the POST through the proxy reached the interface: {status} {text}"
        assert status >= 400, status
        check_skips(watcher.status()["status"]["skipped"], expected)
        detail = client.detail()
        assert "Payments" not in detail, detail
        assert [server.address for server in detail["Shop"]] == [f"{LEGIT}:80"], detail["Shop"]
        text = upstream_file.read_text()
        assert "Payments" not in text and "127.0.0.1" not in text and "10000" not in text, text
        assert watcher.metrics()["swallowkeeper_watcher_skipped_instances"] >= len(expected)


def test_consul_services_skips_what_a_registrant_must_not_reach(tmp_path):
    with ConsulAgent() as agent:
        expected = register_attacks(agent, 18882)
        rc, result = run_module(tmp_path, loopback=False, consul_url=agent.url, skipped_shown=0)
        assert rc == 0, result
        check_skips(result["skipped_items"], expected)
        assert result["upstreams"] == {"Shop": {"servers": [f"{LEGIT}:80"], "directives": []}}, result["upstreams"]
        # opting in lifts loopback (and only it): the test stacks' backends, the demo's
        rc, result = run_module(tmp_path, loopback=False, consul_url=agent.url, allowed_networks=["127.0.0.0/8"])
        assert rc == 0, result
        assert "127.0.0.1:18882" in result["upstreams"]["Payments"]["servers"], result["upstreams"]
        assert "Shop" not in result["upstreams"]  # outside allowed_networks now
        # denied_networks wins over the rest
        rc, result = run_module(tmp_path, loopback=False, consul_url=agent.url, denied_networks=["198.51.100.0/24"])
        assert rc == 0 and result["upstreams"] == {}, result


@pytest.mark.parametrize("value", [["not-a-cidr"], ["10.0.0.0/33"]])
def test_consul_services_refuses_a_bad_network(tmp_path, value):
    """Before any request (no agent listens on port 1)."""
    rc, result = run_module(tmp_path, consul_url="http://127.0.0.1:1", allowed_networks=value)
    assert rc != 0 and "allowed_networks" in result["msg"] and "CIDR" in result["msg"], result


# A command run under it sees no /proc at all (an empty tmpfs over it, in a mount namespace of its own), as
# on a host or sandbox without /proc/net: the kernel's lists of this host's addresses cannot be read.
WITHOUT_PROC = ("unshare", "--mount", "sh", "-c", 'mount -t tmpfs none /proc && exec "$@"', "sh")
UNREAD_WARNING = "this host's own addresses could not be read (/proc/net/fib_trie: No such file or directory)"


def without_proc():
    """WITHOUT_PROC, or a skip saying why it cannot be had here (it needs root, or CAP_SYS_ADMIN)."""
    try:
        done = subprocess.run([*WITHOUT_PROC, "test", "!", "-e", "/proc/net/fib_trie"], capture_output=True,
                              text=True, timeout=30, check=False)
    except OSError as exc:
        pytest.skip(f"unshare cannot run here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"no mount namespace without /proc here: {done.stderr.strip()}")
    return WITHOUT_PROC


def warnings_of(result):
    """The module's warnings as one text (ansible-core 2.19 gives each as a structure holding its msg)."""
    return " ".join(str(warning) for warning in result.get("warnings", []))


def test_consul_services_warns_when_this_hosts_addresses_cannot_be_read(tmp_path):
    wrapper = without_proc()
    with ConsulAgent() as agent:
        agent.register("Shop", "legit", port=80, address=LEGIT)
        rc, result = run_module(tmp_path, loopback=False, consul_url=agent.url)
        assert rc == 0 and "own addresses" not in warnings_of(result), result
        rc, result = run_module(tmp_path, loopback=False, consul_url=agent.url, wrapper=wrapper)
        assert rc == 0, result
        assert UNREAD_WARNING in warnings_of(result) and "list them in denied_networks" in warnings_of(result), result
        assert result["upstreams"] == {"Shop": {"servers": [f"{LEGIT}:80"], "directives": []}}, result["upstreams"]


def test_the_watcher_warns_at_start_when_this_hosts_addresses_cannot_be_read(tmp_path):
    wrapper = without_proc()
    with ConsulAgent() as agent:
        agent.register("Shop", "legit", port=80, address=LEGIT)
        command = [sys.executable, str(ENTRY), "--once", "--dry-run", "--consul-url", agent.url, "--status-listen", "",
                   "--upstream-file", str(tmp_path / "upstreams.conf"), "--dyups-url", "http://127.0.0.1:1"]
        seen = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert UNREAD_WARNING not in seen.stdout + seen.stderr, seen.stdout + seen.stderr
        hidden = subprocess.run([*wrapper, *command], capture_output=True, text=True, timeout=120, check=False)
        warnings = [line for line in hidden.stdout.splitlines() if " WARNING " in line and UNREAD_WARNING in line]
        assert warnings and "denied_networks" in warnings[0], hidden.stdout + hidden.stderr
        assert hidden.returncode == seen.returncode, (hidden.stdout + hidden.stderr, seen.stdout + seen.stderr)
