"""Reserved names from a real Consul 1.8.7, through consul_services (issue 19 finding 3): a service named
``DYUPS_BALANCER`` (in any case) and one in ``reserved_names`` are skipped with the reason, never mapped."""

from __future__ import annotations

from tests.integration import test_consul_services as consul_tests
from tests.integration.test_consul_services import ok, whys
from tests.support import consul

agent, consul_agent = consul_tests.agent, consul.consul_agent   # the fixtures (a real Consul agent)


def test_reserved_names_are_skipped_with_the_reason(agent, tmp_path):
    agent.register("dyups_balancer", "b1", port=18303)
    agent.register("legacy", "l1", port=18304)
    agent.register("api", "a1", port=18305)
    result = ok(tmp_path, consul_url=agent.url, reserved_names=["LEGACY"])
    assert result["upstreams"] == {"api": {"servers": ["127.0.0.1:18305"], "directives": []}}, result
    reasons = whys(result)
    assert "Lua flavor's own balancer" in reasons["upstream 'dyups_balancer'"]
    assert "LEGACY is listed in reserved_names" in reasons["upstream 'legacy'"]
    assert sorted(item["id"] for item in result["instances"]) == ["a1"]
