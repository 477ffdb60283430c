# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Transports for the shared clients, on pooled ``requests`` sessions.

A transport is ``transport(method, url, body, timeout, extra_headers=None) -> (status, body,
headers)`` and raises TransportError when no answer came (the contract of
plugins/module_utils/_http_ansible.py). One session per thread: ``requests.Session`` is not
guaranteed thread-safe, and each watcher thread (two Consul long polls, the sync loop) gets its own
pool of keep-alive connections. Proxy variables and .netrc are ignored: the watcher talks to the
local agent and the local nginx only.
"""

from __future__ import annotations

import threading

import requests

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import TransportError


class SessionTransport:
    """A callable transport bound to one thread-local ``requests.Session`` per thread."""

    def __init__(self, headers=None, verify=True, cert=None, pool_size=10):
        self._headers = dict(headers or {})
        self._verify = verify
        self._cert = cert
        self._pool_size = pool_size
        self._local = threading.local()
        self._sessions = []
        self._lock = threading.Lock()

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=self._pool_size, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers.update(self._headers)
            session.verify = self._verify
            session.cert = self._cert
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def __call__(self, method, url, body, timeout, extra_headers=None):
        try:
            response = self._session().request(method, url, data=body, headers=extra_headers, timeout=timeout,
                                               allow_redirects=False)
        except requests.RequestException as exc:
            raise TransportError(f"{type(exc).__name__}: {_short(exc)}") from None
        return response.status_code, response.content, {key.lower(): value for key, value in response.headers.items()}

    def close(self):
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()


def _short(exc):
    """The innermost reason of a requests error, without urllib3's long object reprs."""
    reason = exc
    seen = 0
    while getattr(reason, "__context__", None) is not None and seen < 5:
        reason = reason.__context__
        seen += 1
    text = str(reason) or type(reason).__name__
    return text if len(text) < 300 else text[:300] + "..."
