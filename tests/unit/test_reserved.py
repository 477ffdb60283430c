"""Reserved upstream names (_reserved.py): the balancer's, the static ones nginx -T shows, reserved_names.

Issue 19 finding 3 and issue 26 finding 7: a service or a task named like a static upstream, or
``DYUPS_BALANCER`` on the Lua flavor, made ``nginx -t`` fail (``duplicate upstream``).
"""

import sys

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _reserved
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_mapping import MappingOptions, map_services
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as watcher_settings
from tests.unit.test_consul_mapping import entry

DUMP = """# configuration file /etc/nginx/nginx.conf:
events {}
http {
    upstream Static_One { server 127.0.0.1:9; }   # upstream commented { out
    proxy_pass http://upstream;
    include /var/lib/swallowkeeper-dyups/upstreams.conf;
    include /etc/nginx/conf.d/*.conf;
}

# configuration file /var/lib/swallowkeeper-dyups/upstreams.conf:
upstream managed { server 10.0.0.1:80; }

# configuration file /etc/nginx/conf.d/more.conf:
upstream "quoted" {
    server 127.0.0.1:11;
}
stream { upstream tcp_pool { server 127.0.0.1:12; } }
"""


def test_the_static_upstreams_of_a_dump_outside_the_managed_file():
    names = _reserved.static_upstreams(DUMP, ["/var/lib/swallowkeeper-dyups/upstreams.conf"])
    assert names == ["Static_One", "quoted", "tcp_pool"]


def test_the_balancer_is_always_reserved_and_names_compare_ignoring_case():
    reserved = _reserved.Reserved(static=["Static_One"], extra=["legacy"])
    assert "dyups_balancer" in reserved and "STATIC_one" in reserved and "LEGACY" in reserved
    assert "web" not in reserved
    with pytest.raises(ValidationError) as caught:
        reserved.check("static_one")
    assert caught.value.rule_id == "name.reserved" and "outside the upstream file" in str(caught.value)


def test_a_failing_nginx_t_says_what_to_do(tmp_path):
    with pytest.raises(_reserved.ReservedNamesUnknown) as caught:
        _reserved.learn_static(sys.executable, str(tmp_path / "missing.conf"))
    assert "reserved_names" in str(caught.value)
    with pytest.raises(_reserved.ReservedNamesUnknown):
        _reserved.learn_static(str(tmp_path / "no-such-nginx"), str(tmp_path / "nginx.conf"))


def test_the_mapping_skips_a_reserved_name_with_the_reason():
    health = {"DYUPS_BALANCER": [entry("DYUPS_BALANCER", "b1", 80)], "static_one": [entry("static_one", "s1", 81)],
              "web": [entry("web", "w1", 82)]}
    result = map_services(health, MappingOptions(reserved=_reserved.Reserved(static=["Static_One"])))
    assert list(result.upstreams) == ["web"] and result.sources == {"web": "web"}
    whys = {item["what"]: item["why"] for item in result.skipped}
    assert "Lua flavor's own balancer" in whys["upstream 'DYUPS_BALANCER'"]
    assert "Static_One is defined in" in whys["upstream 'static_one'"]
    assert [item["upstream"] for item in result.instances] == ["web"]
    assert list(map_services(health, MappingOptions(reserved=["web"])).upstreams) == ["static_one"]


def test_the_watcher_settings_learn_them_or_refuse_to_start(tmp_path):
    built = watcher_settings.build({"reserved_names": ["legacy"]}, environ={})
    assert "legacy" in built.reserved and "DYUPS_BALANCER" in built.reserved
    with pytest.raises(watcher_settings.SettingsError) as caught:
        watcher_settings.build({"nginx_conf": str(tmp_path / "nginx.conf"),
                                "nginx_binary": str(tmp_path / "no-such-nginx")}, environ={})
    assert str(caught.value).startswith("nginx_conf: cannot learn the static upstreams")
