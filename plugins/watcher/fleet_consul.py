# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet share's calls to Consul (plugins/watcher/fleet.py): its KV keys, the publisher's session and
lock, and ``/v1/txn``, through the watcher's keep-alive transport, with the same token, TLS and stale
bound as its long polls."""

from __future__ import annotations

import base64
import json
import os
import socket
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import (
    TOKEN_HEADER, ConsulClient, resolve_token)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import (
    ConsulBadAnswer, ConsulUnavailable)
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics
from ansible_collections.swallowkeeper.dyups.plugins.watcher.settings import Settings
from ansible_collections.swallowkeeper.dyups.plugins.watcher.stale_reads import StaleReads
from ansible_collections.swallowkeeper.dyups.plugins.watcher.transport import KeepAliveTransport


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def value_of(entry: Dict[str, Any]) -> bytes:
    raw = entry.get("Value")
    return base64.b64decode(raw) if isinstance(raw, str) else b""


class FleetKV:
    """The KV, session and transaction calls of the fleet share, through the watcher's transport."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.prefix = f"{settings.fleet_kv_prefix}/{settings.fleet_group}"
        self.lock_key = f"{self.prefix}/leader"
        self.journal_key = f"{self.prefix}/journal"
        self.upstreams_prefix = f"{self.prefix}/upstreams/"
        self.settings = settings
        self.token = resolve_token(token_file=settings.consul_token_file)
        cert = (settings.consul_client_cert, settings.consul_client_key) if settings.consul_client_cert else None
        self.transport = KeepAliveTransport(verify=settings.consul_ca_path or settings.consul_validate_certs, cert=cert)
        # reads: no object_hook (slim_object drops ModifyIndex); long polls stale within consul_max_stale
        self.client = ConsulClient(settings.consul_url, self.transport, token=self.token,
                                   datacenter=settings.consul_datacenter, timeout=settings.consul_timeout)
        self.watch_client = ConsulClient(settings.consul_url, self.transport, token=self.token,
                                         datacenter=settings.consul_datacenter, timeout=settings.consul_timeout,
                                         stale=settings.consul_stale, max_stale=settings.consul_max_stale,
                                         on_too_stale=StaleReads(metrics, settings.consul_max_stale))

    def get(self, key: str, recurse: bool = False) -> Optional[Any]:
        """A key's entry (or, with ``recurse``, the list of entries under it) read from the leader; None:
        no such key."""
        try:
            answer = self.client.get(f"/v1/kv/{key}", params={"recurse": True} if recurse else None, stale=False)
        except ConsulBadAnswer as exc:
            if exc.status == 404:
                return None
            raise
        data = answer.data
        if recurse:
            if not isinstance(data, list) or not all(isinstance(entry, dict) for entry in data):
                raise ConsulBadAnswer(f"GET {answer.url} did not answer a list of KV entries", url=answer.url)
            return data
        if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
            raise ConsulBadAnswer(f"GET {answer.url} did not answer one KV entry", url=answer.url)
        return data[0]

    def put(self, path: str, params: Optional[Dict[str, Any]] = None, body: Any = None) -> Tuple[int, Any]:
        """PUT ``path``: (status, parsed JSON or None); raises a ConsulError for anything but 200 and 409."""
        query = dict(params or {})
        if self.settings.consul_datacenter:
            query["dc"] = self.settings.consul_datacenter
        url = self.client.url_for(path, query)
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        headers = {TOKEN_HEADER: self.token} if self.token else {}
        try:
            status, raw, _headers = self.transport("PUT", url, data, self.settings.consul_timeout, headers)
        except Exception as exc:  # TransportError and what a closed transport raises
            raise ConsulUnavailable(f"the Consul agent did not answer PUT {url}: {exc}", url=url) from None
        text = (raw or b"").decode("utf-8", "replace")
        if status not in (200, 409):
            raise self.client.status_error(url, status, text, method="PUT", rights=(
                f"key_prefix \"{self.settings.fleet_kv_prefix}/\" write and session_prefix \"\" write (fleet_share)"))
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            raise ConsulBadAnswer(f"PUT {url} answered {status} but not JSON: {self.client.shown(text)!r}",
                                  url=url) from None

    def create_session(self) -> str:
        who = f"swallowkeeper-dyups watcher on {socket.gethostname()} (pid {os.getpid()})"
        _status, data = self.put("/v1/session/create", body={
            "Name": who[:200], "TTL": f"{self.settings.fleet_session_ttl:g}s",
            "LockDelay": f"{self.settings.fleet_lock_delay:g}s", "Behavior": "release", "Checks": []})
        if not isinstance(data, dict) or not isinstance(data.get("ID"), str):
            raise ConsulBadAnswer("PUT /v1/session/create did not answer {ID}")
        return data["ID"]

    def renew(self, session: str) -> bool:
        """False when Consul no longer knows the session (it ended: the lock is lost)."""
        try:
            self.put(f"/v1/session/renew/{session}")
        except ConsulBadAnswer as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def destroy(self, session: str) -> None:
        self.put(f"/v1/session/destroy/{session}")

    def acquire(self, session: str) -> bool:
        who = {"host": socket.gethostname(), "pid": os.getpid()}
        _status, data = self.put(f"/v1/kv/{self.lock_key}", {"acquire": session}, json.dumps(who).encode())
        return data is True

    def txn(self, ops: List[Dict[str, Any]]) -> Optional[List[Any]]:
        """Run one transaction; its results, or None when it was rolled back (409: a check failed)."""
        status, data = self.put("/v1/txn", body=ops)
        if status == 409:
            return None
        if not isinstance(data, dict):
            raise ConsulBadAnswer("PUT /v1/txn did not answer {Results, Errors}")
        return data.get("Results") or []

    def close(self) -> None:
        self.transport.close()
