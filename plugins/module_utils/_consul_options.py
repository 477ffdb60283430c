# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: the connection options of every Consul-facing module, defined once.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Consul connection options as one argument spec, and the client built from them.

Documented once in ``plugins/doc_fragments/_consul.py`` (``swallowkeeper.dyups._consul``) and
grouped as the action group ``consul`` in ``meta/runtime.yml``, so that ``module_defaults:
group/swallowkeeper.dyups.consul`` carries them to every Consul-facing module.

An option that is not given is taken from the consul CLI's environment variables on the managed node
(``_consul_client.consul_environment``): ``consul_url`` from ``CONSUL_HTTP_ADDR`` (and ``CONSUL_HTTP_SSL``),
``token_file`` from ``CONSUL_HTTP_TOKEN_FILE``, ``ca_path`` from ``CONSUL_CACERT``, ``client_cert`` and
``client_key`` from ``CONSUL_CLIENT_CERT`` and ``CONSUL_CLIENT_KEY``, ``validate_certs`` from
``CONSUL_HTTP_SSL_VERIFY``; then the defaults. Options given explicitly always win.

The token is resolved in this order: ``token``, the content of ``token_file`` (or of
``CONSUL_HTTP_TOKEN_FILE``), the ``CONSUL_HTTP_TOKEN`` environment variable. It is sent in the
``X-Consul-Token`` header only.
"""

from __future__ import annotations

from typing import Any, Mapping

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import (
    DEFAULT_URL, ConsulClient, consul_environment, resolve_token)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._http_ansible import ansible_transport


def consul_argument_spec() -> dict[str, dict[str, Any]]:
    """A fresh copy of the connection options' argument spec (callers may add to it)."""
    return dict(
        consul_url=dict(type="str"),
        token=dict(type="str", no_log=True),
        token_file=dict(type="path"),
        datacenter=dict(type="str"),
        validate_certs=dict(type="bool"),
        ca_path=dict(type="path"),
        client_cert=dict(type="path"),
        client_key=dict(type="path"),
        timeout=dict(type="float", default=10.0),
    )


CONSUL_REQUIRED_BY = {"client_key": ("client_cert",)}


def consul_client_from_params(params: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                              stale: bool = False) -> ConsulClient:
    """A ConsulClient from a module's params (ansible.module_utils.urls transport).

    Options that are None are taken from the consul CLI's environment variables (``environ``, default
    the process's), then from the defaults. Raises ValidationError when ``token_file`` is given but
    unreadable or empty, or an environment variable cannot be used; the caller fails the module with
    that message (it names the file or the variable, never the token).
    """
    env = consul_environment(environ)

    def pick(option: str, key: str | None = None) -> Any:
        value = params.get(option)
        return env.get(key or option) if value is None else value

    token = resolve_token(params.get("token"), pick("token_file"), environ)
    validate_certs = pick("validate_certs")
    transport = ansible_transport(validate_certs=True if validate_certs is None else validate_certs,
                                  ca_path=pick("ca_path"), client_cert=pick("client_cert"),
                                  client_key=pick("client_key"))
    return ConsulClient(pick("consul_url", "url") or DEFAULT_URL, transport, token=token,
                        datacenter=params.get("datacenter"), timeout=params.get("timeout") or 10.0, stale=stale)
