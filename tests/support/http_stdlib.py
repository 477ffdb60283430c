"""``stdlib_transport``: the smallest transport (the contract of plugins/module_utils/_http_ansible.py), for
tests and benchmarks that want no dependency. Test support only: modules use ``_http_ansible``, the watcher
plugins/watcher/transport.py.

One new connection per request, plain HTTP or HTTPS with the default context.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from urllib.parse import urlsplit

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import TransportError


def stdlib_transport(method, url, body, timeout, extra_headers=None):
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                                 context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=dict(extra_headers or {}))
        response = connection.getresponse()
        return response.status, response.read(), {key.lower(): value for key, value in response.getheaders()}
    except (OSError, socket.timeout, http.client.HTTPException) as exc:
        raise TransportError(f"{type(exc).__name__}: {exc}") from None
    finally:
        connection.close()
