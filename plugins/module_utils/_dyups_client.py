# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: the dyups REST client shared by the modules and the watcher.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A client for the dyups interface, independent of the HTTP library.

The HTTP call is a *transport*: ``transport(method, url, body, timeout) ->
(status, body_bytes, headers)``, raising ``TransportError`` when no answer came.
Modules pass one built on ``ansible.module_utils.urls``; the watcher one built on
kept-alive ``http.client`` connections (plugins/watcher/transport.py); tests may pass the
standard library's.

Status handling, from the wire contract:

* 200 / 204: success (204 = nothing there);
* 404 on GET or DELETE of an upstream: absent;
* 409 (``dyups_trylock on``): sent again with bounded exponential backoff;
* 400 (Lua flavor) and 500 (Tengine): refused, with what the server said;
  a 500 from Tengine may mean nginx needs a reload to return to a good state;
* no answer: ``DyupsUnavailable`` naming the URL.
"""

from __future__ import annotations

import time

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_wire import (
    DETAIL_PATH, LIST_PATH, parse_detail, parse_list, parse_upstream, upstream_path)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import (
    DyupsBusy, DyupsProtocolError, DyupsRejected, DyupsUnavailable, TransportError, ValidationError)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream

TENGINE_500_ADVICE = (
    "Tengine's documentation says a 500 from the dyups interface can leave nginx needing a reload to return "
    "to a good state; the body was validated before it was sent, so check nginx's error log"
)


class DyupsClient:
    """list / detail / get / update / delete against one interface."""

    def __init__(self, api_url, transport, timeout=5.0, busy_retries=6, busy_backoff=0.05, sleep=time.sleep):
        self.api_url = api_url.rstrip("/")
        self.transport = transport
        self.timeout = timeout
        self.busy_retries = busy_retries
        self.busy_backoff = busy_backoff
        self.sleep = sleep
        self.requests_sent = 0

    def _call(self, method, path, body=None):
        url = self.api_url + path
        data = body.encode("utf-8") if isinstance(body, str) else body
        delay = self.busy_backoff
        for attempt in range(self.busy_retries + 1):
            try:
                self.requests_sent += 1
                status, raw, _headers = self.transport(method, url, data, self.timeout)
            except TransportError as exc:
                raise DyupsUnavailable(f"the dyups interface at {url} did not answer {method}: {exc.reason}",
                                       url=url) from None
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else (raw or "")
            if status != 409:
                return status, text, url
            if attempt < self.busy_retries:
                self.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise DyupsBusy(f"{method} {url} answered 409 (busy, dyups_trylock) {self.busy_retries + 1} times",
                        url=url, status=409, body=text)

    @staticmethod
    def _unexpected(method, url, status, text):
        hint = ""
        if status == 404:
            hint = " (is dyups_interface configured at this address?)"
        elif status == 405:
            hint = " (the interface does not allow this method)"
        return DyupsProtocolError(f"{method} {url} answered {status} {text.strip()[:200]!r}{hint}",
                                  url=url, status=status, body=text)

    def _read(self, path, parser):
        status, text, url = self._call("GET", path)
        if status == 204:
            return parser("")
        if status != 200:
            raise self._unexpected("GET", url, status, text)
        try:
            return parser(text)
        except ValidationError as exc:
            raise DyupsProtocolError(f"GET {url}: the answer does not follow the wire format: {exc}",
                                     url=url, status=status, body=text) from None

    def list(self):
        """Names of all upstreams the interface holds."""
        return self._read(LIST_PATH, parse_list)

    def detail(self):
        """{name: [Server, ...]} for all upstreams, with weights and parameters."""
        return self._read(DETAIL_PATH, parse_detail)

    def get(self, name):
        """[(host, port), ...] of one upstream, or None when the interface does not hold it."""
        path = upstream_path(name)
        status, text, url = self._call("GET", path)
        if status == 404:
            return None
        if status != 200:
            raise self._unexpected("GET", url, status, text)
        try:
            return parse_upstream(text)
        except ValidationError as exc:
            raise DyupsProtocolError(f"GET {url}: {exc}", url=url, status=status, body=text) from None

    def update(self, upstream):
        """Create or replace ``upstream`` (an Upstream, so already validated) with one POST."""
        if not isinstance(upstream, Upstream):
            raise TypeError("update() takes an Upstream built by build_upstream()")
        path = upstream_path(upstream.name)
        status, text, url = self._call("POST", path, upstream.body())
        if status == 200:
            return
        if status == 400:
            raise DyupsRejected(f"POST {url} was refused (400): {text.strip()}", url=url, status=status, body=text)
        if status == 500:
            raise DyupsRejected(f"POST {url} answered 500 {text.strip()!r}. {TENGINE_500_ADVICE}",
                                url=url, status=status, body=text)
        raise self._unexpected("POST", url, status, text)

    def delete(self, name):
        """Delete one upstream; False when the interface did not hold it."""
        path = upstream_path(name)
        status, text, url = self._call("DELETE", path)
        if status == 200:
            return True
        if status == 404:
            return False
        if status == 500:
            raise DyupsRejected(f"DELETE {url} answered 500 {text.strip()!r}. {TENGINE_500_ADVICE}",
                                url=url, status=status, body=text)
        raise self._unexpected("DELETE", url, status, text)
