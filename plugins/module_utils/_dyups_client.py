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

What each status means is written in ``_dyups_wire`` (with the paths, bodies and answers); here:

* 409 (busy): sent again with bounded exponential backoff, then ``DyupsBusy``;
* a refusal (400 from the Lua flavor, 500 from Tengine): ``DyupsRejected`` with what the server said;
* any other status the contract does not give: ``DyupsProtocolError``;
* no answer: ``DyupsUnavailable`` naming the URL.

``apply_many`` sends many POSTs and DELETEs pipelined when the transport can (its ``many``: the watcher's
full resync), with the same meaning for each answer; a 409 among them is sent again on its own.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union  # List: see list()

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _dyups_wire as wire
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._http_keepalive import join_url
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import (
    DyupsBusy, DyupsError, DyupsProtocolError, DyupsRejected, DyupsUnavailable, TransportError, ValidationError)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import Server
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream

if TYPE_CHECKING:
    from ansible_collections.swallowkeeper.dyups.plugins.module_utils._http_ansible import Transport

T = TypeVar("T")


class DyupsClient:
    """list / detail / get / update / delete against one interface."""

    def __init__(self, api_url: str, transport: Transport, timeout: float = 5.0, busy_retries: int = 6,
                 busy_backoff: float = 0.05, sleep: Callable[[float], None] = time.sleep) -> None:
        self.api_url = api_url.rstrip("/")
        self.transport = transport
        self.timeout = timeout
        self.busy_retries = busy_retries
        self.busy_backoff = busy_backoff
        self.sleep = sleep

    def _call(self, method: str, path: str, body: str | None = None) -> tuple[int, str, str]:
        url = join_url(self.api_url, path)
        data = body.encode("utf-8") if isinstance(body, str) else body
        delay = self.busy_backoff
        text = ""
        for attempt in range(self.busy_retries + 1):
            try:
                status, raw, _headers = self.transport(method, url, data, self.timeout)
            except TransportError as exc:
                raise _unavailable(method, url, exc) from None
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else (raw or "")
            if status != wire.BUSY:
                return status, text, url
            if attempt < self.busy_retries:
                self.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise DyupsBusy(f"{method} {url} answered {wire.BUSY} (busy, dyups_trylock) {self.busy_retries + 1} times",
                        url=url, status=wire.BUSY, body=text)

    @staticmethod
    def _unexpected(method: str, url: str, status: int, text: str) -> DyupsProtocolError:
        return DyupsProtocolError(wire.unexpected(method, url, status, text), url=url, status=status, body=text)

    def _read(self, path: str, parser: Callable[[str], T]) -> T:
        status, text, url = self._call("GET", path)
        if status == wire.EMPTY:
            return parser("")
        if status != wire.OK:
            raise self._unexpected("GET", url, status, text)
        try:
            return parser(text)
        except ValidationError as exc:
            raise DyupsProtocolError(f"GET {url}: the answer does not follow the wire format: {exc}",
                                     url=url, status=status, body=text) from None

    def list(self) -> List[str]:
        """Names of all upstreams the interface holds."""
        return self._read(wire.LIST_PATH, wire.parse_list)

    def detail(self) -> Dict[str, List[Server]]:
        """{name: [Server, ...]} for all upstreams, with weights and parameters."""
        return self._read(wire.DETAIL_PATH, wire.parse_detail)

    def get(self, name: str) -> List[Tuple[str, int]] | None:
        """[(host, port), ...] of one upstream, or None when the interface does not hold it."""
        path = wire.upstream_path(name)
        status, text, url = self._call("GET", path)
        if status == wire.UNKNOWN:
            return None
        if status != wire.OK:
            raise self._unexpected("GET", url, status, text)
        try:
            return wire.parse_upstream(text)
        except ValidationError as exc:
            raise DyupsProtocolError(f"GET {url}: {exc}", url=url, status=status, body=text) from None

    def _refused_or_unexpected(self, method: str, url: str, status: int, text: str) -> DyupsError:
        refused = wire.refusal(method, url, status, text)
        if refused is not None:
            return DyupsRejected(refused, url=url, status=status, body=text)
        return self._unexpected(method, url, status, text)

    def update(self, upstream: Upstream, body: str | None = None) -> None:
        """Create or replace ``upstream`` (an Upstream, so already validated) with one POST; ``body``:
        its ``post_body`` when the caller made it already."""
        if not isinstance(upstream, Upstream):
            raise TypeError("update() takes an Upstream built by build_upstream()")
        path = wire.upstream_path(upstream.name)
        status, text, url = self._call("POST", path, wire.post_body(upstream) if body is None else body)
        self._change_done("POST", url, status, text)

    def _change_done(self, method: str, url: str, status: int, text: str) -> bool:
        """What the answer to a POST or DELETE of one upstream means: True when done, False for a DELETE of
        an upstream the interface did not hold; raises the DyupsError of a refusal or an unexpected status."""
        if status == wire.OK:
            return True
        if method == "DELETE" and status == wire.UNKNOWN:
            return False
        raise self._refused_or_unexpected(method, url, status, text)

    def apply_many(self, changes: Sequence[Tuple[str, Optional[Upstream]]]) -> List[Union[bool, DyupsError]]:
        """POST each ``(name, Upstream)`` and DELETE each ``(name, None)``, in this order, pipelined when the
        transport has ``many`` (else one after the other); per change, in the same order: True for a POST
        done, for a DELETE whether the interface held the upstream, or the DyupsError ``update`` or
        ``delete`` would have raised."""
        many = getattr(self.transport, "many", None)
        if many is None or len(changes) < 2:
            return [self._one(name, upstream) for name, upstream in changes]
        requests = []
        for name, upstream in changes:
            if upstream is not None and not isinstance(upstream, Upstream):
                raise TypeError("apply_many() takes Upstreams built by build_upstream()")
            url = join_url(self.api_url, wire.upstream_path(name))
            requests.append(("DELETE", url, None) if upstream is None
                            else ("POST", url, wire.post_body(upstream).encode("utf-8")))
        outcomes: List[Union[bool, DyupsError]] = []
        for (name, upstream), (method, url, _body), answer in zip(changes, requests, many(requests, self.timeout)):
            if isinstance(answer, TransportError):
                outcomes.append(_unavailable(method, url, answer))
                continue
            status, raw, _headers = answer
            if status == wire.BUSY:
                outcomes.append(self._one(name, upstream))   # with the busy retries of a lone request
                continue
            try:
                outcomes.append(self._change_done(method, url, status, raw.decode("utf-8", "replace")))
            except DyupsError as exc:
                outcomes.append(exc)
        return outcomes

    def _one(self, name: str, upstream: Optional[Upstream]) -> Union[bool, DyupsError]:
        try:
            if upstream is None:
                return self.delete(name)
            self.update(upstream)
            return True
        except DyupsError as exc:
            return exc

    def delete(self, name: str) -> bool:
        """Delete one upstream; False when the interface did not hold it."""
        path = wire.upstream_path(name)
        status, text, url = self._call("DELETE", path)
        return self._change_done("DELETE", url, status, text)


def _unavailable(method: str, url: str, exc: TransportError) -> DyupsUnavailable:
    return DyupsUnavailable(f"the dyups interface at {url} did not answer {method}: {exc.reason}", url=url)
