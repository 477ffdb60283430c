"""ConsulClient and BlockingQuery against a real Consul agent (tests/support/consul.py).

What Consul 1.8.7 does here is what consul-facts.md reports: /v1/health/state/any wakes on a check
flip, /v1/catalog/services does not (it wakes on registrations); a -dev agent restarted starts its
indexes over (the index goes backwards); with ACLs on and default deny, a read without a token is
filtered to nothing rather than refused.
"""

import threading
import time

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_answers import UNREAD_FIELDS, slim_object
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import BlockingQuery, ConsulClient
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import (
    ConsulBadAnswer, ConsulForbidden, ConsulServerError, ConsulUnavailable)
from ansible_collections.swallowkeeper.dyups.plugins.modules.consul_services import CHECK_FIELDS, check_fields
from tests.support.http_stdlib import stdlib_transport
from tests.support.consul import ConsulAgent, consul_acl_agent, consul_agent  # noqa: F401 (fixtures)  # pylint: disable=unused-import  # pytest fixtures
from tests.support.ports import free_port

WAKE_BOUND = 3.0   # a wake-up must come well before the 20 s wait ends (measured: ~0.01 s)
LONG_WAIT = 20.0


def client_for(agent, **kwargs):
    return ConsulClient(agent.url, stdlib_transport, **kwargs)


@pytest.fixture
def agent(consul_agent):  # noqa: F811
    yield consul_agent
    consul_agent.clear_services()


def poll_in_thread(query):
    """Start ``query.poll()`` in a thread; returns a function that joins it and gives (result, seconds)."""
    box = {}

    def run():
        started = time.monotonic()
        try:
            box["result"] = query.poll()
        except Exception as exc:  # handed to the test thread, which raises it
            box["error"] = exc
        box["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join(timeout=LONG_WAIT * 2):
        thread.join(timeout)
        assert not thread.is_alive(), "the blocking query did not return"
        if "error" in box:
            raise box["error"]
        return box["result"], box["elapsed"]

    return join


def settle():
    """Give the long poll time to reach the agent and block (the change must come after)."""
    time.sleep(0.3)


def test_reads_catalog_and_health(agent):
    agent.register("web", "w1", port=18101, tags=["gray=b"])
    client = client_for(agent)
    catalog = client.catalog_services()
    assert catalog.data["web"] == ["gray=b"] and catalog.index > 0
    health = client.health_service("web")
    assert [entry["Service"]["ID"] for entry in health.data] == ["w1"]
    assert any(check["ServiceID"] == "w1" for check in client.health_state_any().data)


def test_service_names_with_slashes_and_spaces_are_read_as_such(agent):
    agent.register("a/b", "slash", port=1)
    agent.register("a b", "space", port=2)
    client = client_for(agent)
    assert [entry["Service"]["ID"] for entry in client.health_service("a/b").data] == ["slash"]
    assert [entry["Service"]["ID"] for entry in client.health_service("a b").data] == ["space"]


def test_health_state_any_wakes_on_a_check_flip_and_catalog_does_not(agent):
    agent.register("web", "w1", port=18101)
    client = client_for(agent)
    health = BlockingQuery(client, "/v1/health/state/any", wait=LONG_WAIT)
    catalog = BlockingQuery(client, "/v1/catalog/services", wait=2.0)
    assert health.poll().changed and catalog.poll().changed
    health_join = poll_in_thread(health)
    catalog_join = poll_in_thread(catalog)
    settle()
    agent.fail_check("w1", wait=False)
    result, elapsed = health_join()
    assert result.changed and elapsed < WAKE_BOUND
    assert any(check["ServiceID"] == "w1" and check["Status"] == "critical" for check in result.data)
    catalog_result, catalog_elapsed = catalog_join()
    assert catalog_result.changed is False and catalog_elapsed >= 1.9, (
        "Consul 1.8.7's /v1/catalog/services is documented here not to wake on a health change")


def test_setting_a_check_to_its_current_status_wakes_nothing(agent):
    agent.register("web", "w1", port=18101)
    query = BlockingQuery(client_for(agent), "/v1/health/state/any", wait=2.0)
    query.poll()
    join = poll_in_thread(query)
    settle()
    agent.pass_check("w1", wait=False)
    result, elapsed = join()
    assert result.changed is False and elapsed >= 1.9


def test_catalog_services_wakes_on_a_registration(agent):
    client = client_for(agent)
    query = BlockingQuery(client, "/v1/catalog/services", wait=LONG_WAIT)
    query.poll()
    join = poll_in_thread(query)
    settle()
    agent.register("fresh", "f1", port=18102, wait=False)
    result, elapsed = join()
    assert result.changed and elapsed < WAKE_BOUND and "fresh" in result.data


def test_catalog_services_wakes_on_a_deregistration(agent):
    agent.register("gone", "g1", port=18103)
    query = BlockingQuery(client_for(agent), "/v1/catalog/services", wait=LONG_WAIT)
    query.poll()
    join = poll_in_thread(query)
    settle()
    agent.deregister("g1", wait=False)
    result, elapsed = join()
    assert result.changed and elapsed < WAKE_BOUND and "gone" not in result.data


def test_restart_sends_the_index_backwards_and_the_query_resets():
    with ConsulAgent() as agent:
        for number in range(15):  # move the index well past where a fresh agent starts
            agent.register("bulk", f"b{number}", port=19000 + number, wait=False)
        client = client_for(agent)
        query = BlockingQuery(client, "/v1/catalog/services", wait=5.0, min_interval=0.05)
        agent.wait_until(lambda: len(client.health_service("bulk").data) == 15, "15 bulk instances")
        before = query.poll().index
        agent.restart()
        agent.register("after", "a1", port=19100)
        result = query.poll()
        assert result.index < before, (result.index, before)
        assert result.reset == "backwards" and result.changed and "after" in result.data
        assert query.index == 0
        again = query.poll()  # a plain read, then blocking resumes from the new index
        assert query.index == again.index and again.changed is False


def test_agent_down_is_unavailable_and_names_the_url():
    port = free_port()
    client = ConsulClient(f"http://127.0.0.1:{port}", stdlib_transport, timeout=2)
    with pytest.raises(ConsulUnavailable) as caught:
        client.catalog_services()
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_killed_agent_during_a_blocking_query_is_unavailable():
    with ConsulAgent() as agent:
        query = BlockingQuery(client_for(agent), "/v1/health/state/any", wait=LONG_WAIT)
        query.poll()
        join = poll_in_thread(query)
        settle()
        agent.kill()
        with pytest.raises(ConsulUnavailable):
            join()


def test_unknown_datacenter_is_a_server_error(agent):
    with pytest.raises(ConsulServerError, match="No path to datacenter"):
        client_for(agent, datacenter="nowhere").catalog_services()


def test_a_url_that_is_not_the_api_is_a_bad_answer(agent):
    with pytest.raises(ConsulBadAnswer, match="not JSON"):
        ConsulClient(agent.url + "/ui", stdlib_transport).catalog_services()


def test_acl_without_token_is_forbidden_not_empty(consul_acl_agent):  # noqa: F811
    agent = consul_acl_agent
    agent.register("web", "w1", port=18101)
    with pytest.raises(ConsulForbidden, match="no ACL token was sent"):
        client_for(agent).catalog_services()


def test_acl_with_a_read_token_works_and_a_bad_token_is_refused(consul_acl_agent):  # noqa: F811
    agent = consul_acl_agent
    agent.register("web", "w1", port=18101)
    token = agent.create_token()
    client = client_for(agent, token=token)
    assert "web" in client.catalog_services().data
    assert [entry["Service"]["ID"] for entry in client.health_service("web").data] == ["w1"]
    with pytest.raises(ConsulForbidden, match="refused or lacks the rights") as caught:
        client_for(agent, token="00000000-0000-0000-0000-000000000000").catalog_services()
    assert caught.value.status == 403


def test_acl_token_without_node_read_sees_services_but_its_empty_instances_are_refused(consul_acl_agent):  # noqa: F811
    """Consul filters the instances (200 []); the client sees that the servers' 'consul' instance is gone too."""
    agent = consul_acl_agent
    agent.register("web", "w1", port=18101)
    token = agent.create_token('service_prefix "" { policy = "read" }\n')
    client = client_for(agent, token=token)
    assert "web" in client.catalog_services().data
    status, raw, _headers = stdlib_transport("GET", agent.url + "/v1/health/service/web", None, 5,
                                             {"X-Consul-Token": token})
    assert (status, raw.strip()) == (200, b"[]")
    with pytest.raises(ConsulForbidden, match="lacks node:read"):
        client.health_service("web")
    with pytest.raises(ConsulForbidden, match="listed no node at all"):
        client.catalog_nodes()


def test_slimming_never_drops_a_service_whose_name_is_a_field_name(agent):
    """The watcher's reader drops fields it never reads (slim_object) from records; the catalog is a
    map keyed by service names, which users choose: "Name", "Output" or "Notes" must stay."""
    names = ["Name", "Output", "Notes", "Type"]
    assert set(names) <= UNREAD_FIELDS
    for port, name in enumerate(names, start=9001):
        agent.register(name, port=port)
    catalog = client_for(agent, object_hook=slim_object).catalog_services().data
    assert set(names) <= set(catalog)
    entries = client_for(agent, object_hook=slim_object).health_service("Output").data
    assert [entry["Service"]["Service"] for entry in entries] == ["Output"]
    assert "Output" not in entries[0]["Checks"][0]   # a check's own Output field is still dropped


def test_a_hook_given_to_one_read_slims_that_read_only(agent):
    """consul_services reads the checks of /v1/health/state/any through its own hook (check_fields: the
    fields health_index reads), given to that read: the client's other reads, and the catalog, are as read."""
    agent.register("Output", "o1", port=9001)
    client = client_for(agent)
    checks = client.health_state_any(object_hook=check_fields).data
    mine = [check for check in checks if check.get("ServiceID") == "o1"]
    assert mine and all(set(check) <= set(CHECK_FIELDS) for check in checks)
    assert mine[0]["ServiceName"] == "Output" and mine[0]["Status"] in ("passing", "warning", "critical")
    assert "Output" in client.health_state_any().data[0]     # the next read has no hook: every field
    assert "Output" in client.read("/v1/catalog/services", object_hook=check_fields).data   # never slimmed
    kept = client_for(agent, object_hook=slim_object).health_state_any(object_hook=check_fields).data
    assert all(set(check) <= set(CHECK_FIELDS) for check in kept)   # the read's hook, not the client's
