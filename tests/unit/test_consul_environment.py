"""The consul CLI's environment variables (CONSUL_HTTP_ADDR ...) as defaults for the modules and the watcher.

``consul_environment`` (plugins/module_utils/_consul_client.py) reads them in one place; the modules
(``_consul_options.consul_client_from_params``) and the watcher (``settings.build``) use what it reads only
for options that are not given. A real agent reached through CONSUL_HTTP_ADDR alone:
tests/integration/test_consul_environment.py.
"""

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _consul_options
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import (
    consul_environment, consul_url_from_address)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as watcher_settings


@pytest.mark.parametrize("address, ssl, url", [
    ("127.0.0.1:8500", False, "http://127.0.0.1:8500"),
    ("127.0.0.1:8501", True, "https://127.0.0.1:8501"),
    ("consul.service:8500", False, "http://consul.service:8500"),
    ("http://10.0.0.5:8500", False, "http://10.0.0.5:8500"),
    ("http://10.0.0.5:8500", True, "https://10.0.0.5:8500"),   # CONSUL_HTTP_SSL never goes back to http
    ("https://10.0.0.5:8501/", False, "https://10.0.0.5:8501"),
    ("HTTPS://[::1]:8501", False, "https://[::1]:8501"),
    ("[::1]:8500", False, "http://[::1]:8500"),
])
def test_address_forms(address, ssl, url):
    assert consul_url_from_address(address, ssl=ssl) == url


@pytest.mark.parametrize("address, fragment", [
    ("unix:///var/run/consul.sock", "unix sockets"),
    ("ftp://x:1", "expected host:port"),
    ("http://", "expected host:port"),
    ("a b:8500", "expected host:port"),
])
def test_bad_addresses_name_the_variable(address, fragment):
    with pytest.raises(ValidationError, match=fragment) as caught:
        consul_url_from_address(address)
    assert "CONSUL_HTTP_ADDR" in str(caught.value)


def test_nothing_set_gives_nothing():
    assert consul_environment({}) == {}
    assert consul_environment({"CONSUL_HTTP_ADDR": "", "CONSUL_CACERT": "  "}) == {}


def test_every_variable():
    env = {"CONSUL_HTTP_ADDR": "consul.local:8501", "CONSUL_HTTP_SSL": "true", "CONSUL_HTTP_TOKEN_FILE": "/t",
           "CONSUL_CACERT": "/ca.pem", "CONSUL_CLIENT_CERT": "/c.pem", "CONSUL_CLIENT_KEY": "/k.pem",
           "CONSUL_HTTP_SSL_VERIFY": "false", "CONSUL_HTTP_TOKEN": "not-read-here"}
    assert consul_environment(env) == {"url": "https://consul.local:8501", "token_file": "/t", "ca_path": "/ca.pem",
                                       "client_cert": "/c.pem", "client_key": "/k.pem", "validate_certs": False}


def test_ssl_alone_means_https_on_the_default_address():
    assert consul_environment({"CONSUL_HTTP_SSL": "1"}) == {"url": "https://127.0.0.1:8500"}
    assert consul_environment({"CONSUL_HTTP_SSL": "false"}) == {}


@pytest.mark.parametrize("name", ["CONSUL_HTTP_SSL", "CONSUL_HTTP_SSL_VERIFY"])
def test_a_bad_boolean_names_the_variable(name):
    with pytest.raises(ValidationError, match=name):
        consul_environment({name: "perhaps"})


# -- the modules ------------------------------------------------------------------------------------------

@pytest.fixture
def transport_args(monkeypatch):
    seen = {}

    def recording_transport(**kwargs):
        seen.update(kwargs)
        return lambda *args, **kw: (200, b"{}", {})

    monkeypatch.setattr(_consul_options, "ansible_transport", recording_transport)
    return seen


def params(**given):
    values = {name: None for name in _consul_options.consul_argument_spec()}
    values["timeout"] = 10.0
    values.update(given)
    return values


def test_module_defaults_without_environment(transport_args):
    client = _consul_options.consul_client_from_params(params(), environ={})
    assert client.url == "http://127.0.0.1:8500" and "token=None" in repr(client)
    assert transport_args == {"validate_certs": True, "ca_path": None, "client_cert": None, "client_key": None}


def test_module_reads_the_environment_for_options_not_given(transport_args, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file\n")
    env = {"CONSUL_HTTP_ADDR": "https://consul.local:8501", "CONSUL_HTTP_TOKEN_FILE": str(token_file),
           "CONSUL_HTTP_TOKEN": "from-the-variable", "CONSUL_CACERT": "/ca.pem", "CONSUL_CLIENT_CERT": "/c.pem",
           "CONSUL_CLIENT_KEY": "/k.pem", "CONSUL_HTTP_SSL_VERIFY": "0"}
    client = _consul_options.consul_client_from_params(params(), environ=env)
    assert client.url == "https://consul.local:8501"
    assert client._token == "from-the-file"  # pylint: disable=protected-access  # the file wins, as in the CLI
    assert transport_args == {"validate_certs": False, "ca_path": "/ca.pem", "client_cert": "/c.pem",
                              "client_key": "/k.pem"}


def test_module_options_win_over_the_environment(transport_args):
    env = {"CONSUL_HTTP_ADDR": "consul.local:8501", "CONSUL_HTTP_SSL": "true", "CONSUL_HTTP_TOKEN": "env-token",
           "CONSUL_CACERT": "/ca.pem", "CONSUL_HTTP_SSL_VERIFY": "false"}
    client = _consul_options.consul_client_from_params(
        params(consul_url="http://127.0.0.1:18500", token="option-token", ca_path="/mine.pem", validate_certs=True),
        environ=env)
    assert client.url == "http://127.0.0.1:18500"
    assert client._token == "option-token"  # pylint: disable=protected-access
    assert transport_args["validate_certs"] is True and transport_args["ca_path"] == "/mine.pem"


def test_module_token_variable_when_no_file(transport_args):
    client = _consul_options.consul_client_from_params(params(), environ={"CONSUL_HTTP_TOKEN": " t0k "})
    assert client._token == "t0k"  # pylint: disable=protected-access


def test_module_bad_environment_is_a_validation_error(transport_args):
    with pytest.raises(ValidationError, match="CONSUL_HTTP_ADDR"):
        _consul_options.consul_client_from_params(params(), environ={"CONSUL_HTTP_ADDR": "unix:///x.sock"})


def test_module_argument_spec_leaves_url_and_verification_unset():
    spec = _consul_options.consul_argument_spec()
    assert "default" not in spec["consul_url"] and "default" not in spec["validate_certs"]


# -- the watcher -----------------------------------------------------------------------------------------

def test_watcher_defaults_without_environment():
    settings = watcher_settings.build(environ={})
    assert settings.consul_url == "http://127.0.0.1:8500" and settings.consul_validate_certs is True
    assert settings.consul_token_file is None and settings.consul_ca_path is None


def test_watcher_reads_the_environment():
    env = {"CONSUL_HTTP_ADDR": "127.0.0.1:18500", "CONSUL_HTTP_SSL": "true", "CONSUL_HTTP_TOKEN_FILE": "/t",
           "CONSUL_CACERT": "/ca.pem", "CONSUL_CLIENT_CERT": "/c.pem", "CONSUL_CLIENT_KEY": "/k.pem"}
    settings = watcher_settings.build(environ=env)
    assert settings.consul_url == "https://127.0.0.1:18500"
    assert (settings.consul_token_file, settings.consul_ca_path, settings.consul_client_cert,
            settings.consul_client_key, settings.consul_validate_certs) == ("/t", "/ca.pem", "/c.pem", "/k.pem", True)


def test_watcher_verify_false_drops_the_environment_ca():
    settings = watcher_settings.build(environ={"CONSUL_CACERT": "/ca.pem", "CONSUL_HTTP_SSL_VERIFY": "false"})
    assert settings.consul_validate_certs is False and settings.consul_ca_path is None


def test_watcher_file_and_flags_win_over_the_environment():
    env = {"CONSUL_HTTP_ADDR": "127.0.0.1:18500", "CONSUL_CACERT": "/env.pem"}
    from_file = watcher_settings.build({"consul_url": "http://127.0.0.1:28500"}, environ=env)
    assert from_file.consul_url == "http://127.0.0.1:28500" and from_file.consul_ca_path == "/env.pem"
    from_flag = watcher_settings.build({"consul_url": "http://127.0.0.1:28500"},
                                       {"consul_url": "http://127.0.0.1:38500", "consul_ca_path": "/flag.pem"},
                                       environ=env)
    assert from_flag.consul_url == "http://127.0.0.1:38500" and from_flag.consul_ca_path == "/flag.pem"


def test_watcher_bad_environment_names_the_variable():
    with pytest.raises(watcher_settings.SettingsError, match="CONSUL_HTTP_SSL_VERIFY"):
        watcher_settings.build(environ={"CONSUL_HTTP_SSL_VERIFY": "maybe"})
