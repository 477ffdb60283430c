# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: the HTTP transport that modules use.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``ansible_transport``: the modules' transport, keep-alive connections of the standard library
(``_http_keepalive.py``), so a managed node needs no extra package.

One module run reuses one connection per host and thread (consul_services reads thousands of
services from the local agent), builds no TLS context for ``http://`` and one for ``https://``; it
follows no redirect and uses no proxy. ``ansible.module_utils.urls.open_url`` did neither: it built
an SSL context per request, ``http://`` included (issue 26: 7.25 s of every 8.5 s at 5 000 services).
"""

from __future__ import annotations

from typing import Callable, Dict, Mapping, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._http_keepalive import KeepAliveTransport

# transport(method, url, body, timeout, extra_headers=None) -> (status, body, headers)
Transport = Callable[..., Tuple[int, bytes, Dict[str, str]]]


def ansible_transport(headers: Mapping[str, str] | None = None, validate_certs: bool = True, ca_path: str | None = None,
                      client_cert: str | None = None, client_key: str | None = None) -> Transport:
    """A transport callable bound to TLS settings and fixed headers (a token, say)."""
    verify: bool | str = (ca_path or True) if validate_certs else False
    return KeepAliveTransport(headers, verify=verify, cert=(client_cert, client_key) if client_cert else None)
