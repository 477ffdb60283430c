# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: the HTTP transport that modules use (ansible.module_utils.urls).
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``ansible_transport``: HTTP through ``open_url``, so a managed node needs no extra package.

A transport is ``transport(method, url, body, timeout, extra_headers=None) -> (status, body_bytes,
headers)`` with header names in lower case; it raises TransportError when no answer came. Every
HTTP status, 4xx and 5xx included, is an answer and is returned, not raised.
"""

from __future__ import annotations

import http.client
import socket
from typing import Any, Callable, Dict, Mapping, Tuple
from urllib.error import HTTPError, URLError

from ansible.module_utils.urls import open_url

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import TransportError

# transport(method, url, body, timeout, extra_headers=None) -> (status, body, headers)
Transport = Callable[..., Tuple[int, bytes, Dict[str, str]]]


def _lower(headers: Any) -> dict[str, str]:
    return {key.lower(): value for key, value in (headers or {}).items()}


def ansible_transport(headers: Mapping[str, str] | None = None, validate_certs: bool = True, ca_path: str | None = None,
                      client_cert: str | None = None, client_key: str | None = None) -> Transport:
    """A transport callable bound to TLS settings and fixed headers (a token, say)."""
    fixed = dict(headers or {})

    def transport(method: str, url: str, body: bytes | None, timeout: float,
                  extra_headers: Mapping[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        request_headers = dict(fixed)
        request_headers.update(extra_headers or {})
        try:
            response = open_url(url, data=body, method=method, headers=request_headers, timeout=timeout,
                                validate_certs=validate_certs, ca_path=ca_path, client_cert=client_cert,
                                client_key=client_key, follow_redirects="none", use_proxy=False)
            return response.getcode(), response.read(), _lower(response.headers)
        except HTTPError as exc:
            try:
                data = exc.read()
            except Exception:  # the error body is informative only; its absence is not a failure
                data = b""
            return exc.code, data, _lower(exc.headers)
        except (URLError, OSError, socket.timeout, http.client.HTTPException) as exc:  # not HTTP, cut short
            reason = getattr(exc, "reason", exc)
            raise TransportError(f"{type(reason).__name__}: {reason}") from None

    return transport
