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
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_wire import DEFAULT_API_URL, SECRET_HEADER
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._http_ansible import Transport, ansible_transport

DEFAULT_TIMEOUT = 5.0


def dyups_argument_spec() -> dict[str, dict[str, Any]]:
    """A fresh copy of the connection options' argument spec (callers may add to it)."""
    return dict(
        api_url=dict(type="str", default=DEFAULT_API_URL),
        api_secret_file=dict(type="path"),
        timeout=dict(type="float", default=DEFAULT_TIMEOUT),
    )


def secret_headers(secret_file: str | None) -> dict[str, str]:
    """{SECRET_HEADER: the secret} read from ``secret_file`` (whitespace around it stripped), {} without
    one; ValidationError naming the file (never the secret) when it cannot be read, is empty, or holds a
    character a header cannot carry."""
    if not secret_file:
        return {}
    try:
        with open(secret_file, encoding="utf-8") as handle:
            secret = handle.read().strip()
    except (OSError, UnicodeError) as exc:
        raise ValidationError("api_secret_file", secret_file, f"cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    if not secret:
        raise ValidationError("api_secret_file", secret_file, "is empty")
    if not all(33 <= ord(char) <= 126 for char in secret):
        raise ValidationError("api_secret_file", secret_file,
                              "holds a character other than printable ASCII without spaces (a header carries it)")
    return {SECRET_HEADER: secret}


def check_api_url(api_url: str) -> str:
    """``api_url`` without a trailing slash, or ValidationError: http(s)://HOST[:PORT][/PREFIX] or
    unix:/ABSOLUTE/SOCKET only."""
    if api_url.startswith("unix:"):
        path = api_url[len("unix:"):]
        if not path.startswith("/") or ":" in path or "\0" in path or len(path.encode()) > 107 or path.endswith("/"):
            raise ValidationError("api_url", api_url, "must be unix:/ABSOLUTE/PATH of a socket (no ':', at most "
                                                      "107 bytes)")
        return api_url
    try:
        parts = urlsplit(api_url)
        port = parts.port
    except ValueError as exc:
        raise ValidationError("api_url", api_url, f"is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("api_url", api_url, "must be http://HOST[:PORT], https://HOST[:PORT] or unix:/PATH")
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
    headers = secret_headers(params.get("api_secret_file"))
    return DyupsClient(api_url, transport or ansible_transport(headers), timeout=timeout)
