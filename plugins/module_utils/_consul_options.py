# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: the connection options of every Consul-facing module, defined once.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Consul connection options as one argument spec, and the client built from them.

Documented once in ``plugins/doc_fragments/_consul.py`` (``swallowkeeper.dyups._consul``) and
grouped as the action group ``consul`` in ``meta/runtime.yml``, so that ``module_defaults:
group/swallowkeeper.dyups.consul`` carries them to every Consul-facing module.

The token is resolved in this order: ``token``, the content of ``token_file``, the
``CONSUL_HTTP_TOKEN`` environment variable. It is sent in the ``X-Consul-Token`` header only.
"""

from __future__ import annotations

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import (
    DEFAULT_URL, ConsulClient, resolve_token)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._http_ansible import ansible_transport

CONNECTION_OPTIONS = ("consul_url", "token", "token_file", "datacenter", "validate_certs", "ca_path",
                      "client_cert", "client_key", "timeout")


def consul_argument_spec():
    """A fresh copy of the connection options' argument spec (callers may add to it)."""
    return dict(
        consul_url=dict(type="str", default=DEFAULT_URL),
        token=dict(type="str", no_log=True),
        token_file=dict(type="path"),
        datacenter=dict(type="str"),
        validate_certs=dict(type="bool", default=True),
        ca_path=dict(type="path"),
        client_cert=dict(type="path"),
        client_key=dict(type="path"),
        timeout=dict(type="float", default=10.0),
    )


CONSUL_REQUIRED_BY = {"client_key": ("client_cert",)}


def consul_client_from_params(params, environ=None, stale=False):
    """A ConsulClient from a module's params (ansible.module_utils.urls transport).

    Raises ValidationError when ``token_file`` is given but unreadable or empty; the caller fails
    the module with that message (it names the file, never the token).
    """
    token = resolve_token(params.get("token"), params.get("token_file"), environ)
    transport = ansible_transport(validate_certs=params.get("validate_certs", True), ca_path=params.get("ca_path"),
                                  client_cert=params.get("client_cert"), client_key=params.get("client_key"))
    return ConsulClient(params.get("consul_url") or DEFAULT_URL, transport, token=token,
                        datacenter=params.get("datacenter"), timeout=params.get("timeout") or 10.0, stale=stale)
