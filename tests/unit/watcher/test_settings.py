"""Watcher settings: defaults < file < flags, and clear errors (plugins/watcher/settings.py)."""

import json

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as s


def test_defaults():
    settings = s.build()
    assert settings.consul_url == "http://127.0.0.1:8500"
    assert settings.dyups_url == "http://127.0.0.1:18882"
    assert settings.exclude == ["consul"]
    assert settings.zero_instances == "keep"
    assert settings.removal_guard_window == 60.0


def test_flags_win_over_file(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"tag_key": "canary", "include": ["A", "B"], "drift_interval": 5}))
    settings = s.build(s.load_file(str(path)), {"tag_key": "gray", "include": "C,D"}, config_file=str(path))
    assert settings.tag_key == "gray"
    assert settings.include == ["C", "D"]
    assert settings.drift_interval == 5.0


def test_yaml_file(tmp_path):
    path = tmp_path / "w.yml"
    path.write_text("upstream_file: /tmp/x.conf\ndirectives:\n  - keepalive 32\nconsul_stale: false\n")
    settings = s.build(s.load_file(str(path)))
    assert settings.directives == ["keepalive 32"] and settings.consul_stale is False


@pytest.mark.parametrize("values, fragment", [
    ({"zero_instances": "maybe"}, "zero_instances"),
    ({"removal_guard_share": 0}, "removal_guard_share"),
    ({"validate_command": "nginx -t"}, "%s"),
    ({"status_listen": "0.0.0.0:9000"}, "loopback"),
    ({"directives": ["keepalive 32; server x"]}, "directives"),
    ({"upstream_directives": {"bad name": ["keepalive 1"]}}, "bad name"),
    ({"consul_wait": 900}, "consul_wait"),
    ({"consul_stale": "perhaps"}, "consul_stale"),
    ({"consul_max_stale": -1}, "consul_max_stale: expected seconds from 0"),
    ({"consul_max_stale": "nan"}, "consul_max_stale: expected seconds from 0"),
    ({"removal_guard_window": -1}, "removal_guard_window: expected seconds from 0"),
    ({"removal_guard_window": "nan"}, "removal_guard_window: expected seconds from 0"),
    ({"removal_guard_window": 10 ** 6}, "removal_guard_window: expected seconds from 0 .* to 3600"),
    ({"removal_guard_window": "a minute"}, "removal_guard_window: expected float"),
])
def test_bad_settings_name_the_option(values, fragment):
    with pytest.raises(s.SettingsError, match=fragment):
        s.build(values)


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "w.json"
    path.write_text('{"consul_token": "secret"}')
    with pytest.raises(s.SettingsError, match="unknown option"):
        s.load_file(str(path))


def test_every_option_is_documented():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "watcher.md").read_text()
    missing = [option.name for option in s.OPTIONS if f"`{option.name}`" not in text]
    assert not missing, f"docs/watcher.md lacks {missing}"


def test_the_server_policy_is_built_once_with_this_hosts_addresses(monkeypatch):
    """build() keeps the policy its check of the network settings made (6b64ee2 built a second one, with
    this host's addresses); a ConsulSource refuses settings without it rather than read with a weaker one."""
    from ansible_collections.swallowkeeper.dyups.plugins.watcher.consul_source import ConsulSource
    from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics

    built = []
    real = s.ServerPolicy

    def counted(*args, **kwargs):
        built.append(kwargs.get("own"))
        return real(*args, **kwargs)

    monkeypatch.setattr(s, "ServerPolicy", counted)
    settings = s.build({"denied_networks": ["10.9.0.0/16"]}, environ={})
    assert built == [s.read_host_networks()[0]]
    assert settings.policy.own == real(own=s.read_host_networks()[0]).own
    with pytest.raises(ValueError, match="settings.build"):
        ConsulSource(s.Settings(values={}), Metrics())
