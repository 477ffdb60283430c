# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: the connection options of every dyups-facing module, defined once.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The dyups connection options as one argument spec, and the client built from them.

Documented once in ``plugins/doc_fragments/_dyups.py`` (``swallowkeeper.dyups._dyups``) and grouped
as the action group ``dyups`` in ``meta/runtime.yml``, so that ``module_defaults:
group/swallowkeeper.dyups.dyups`` carries them to every dyups-facing module.
"""

from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import urlsplit

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_wire import DEFAULT_API_URL
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._http_ansible import Transport, ansible_transport

DEFAULT_TIMEOUT = 5.0


def dyups_argument_spec() -> dict[str, dict[str, Any]]:
    """A fresh copy of the connection options' argument spec (callers may add to it)."""
    return dict(
        api_url=dict(type="str", default=DEFAULT_API_URL),
        timeout=dict(type="float", default=DEFAULT_TIMEOUT),
    )


def check_api_url(api_url: str) -> str:
    """``api_url`` without a trailing slash, or ValidationError: http(s)://HOST[:PORT][/PREFIX] only."""
    try:
        parts = urlsplit(api_url)
        port = parts.port
    except ValueError as exc:
        raise ValidationError("api_url", api_url, f"is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("api_url", api_url, "must be http://HOST[:PORT] or https://HOST[:PORT]")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValidationError("api_url", api_url, "takes no query, fragment or user info")
    if port == 0:
        raise ValidationError("api_url", api_url, "the port must be 1-65535")
    return api_url.rstrip("/")


def check_timeout(timeout: float | None) -> float:
    if timeout is None or not timeout > 0:
        raise ValidationError("timeout", timeout, "must be a number of seconds above 0")
    return timeout


def dyups_client_from_params(params: Mapping[str, Any], transport: Transport | None = None) -> DyupsClient:
    """A DyupsClient from a module's params (``ansible.module_utils.urls`` transport unless given).

    Raises ValidationError for a malformed ``api_url`` or ``timeout``, before any request.
    """
    api_url = check_api_url(params.get("api_url") or DEFAULT_API_URL)
    timeout = check_timeout(params.get("timeout") if params.get("timeout") is not None else DEFAULT_TIMEOUT)
    return DyupsClient(api_url, transport or ansible_transport(), timeout=timeout)
