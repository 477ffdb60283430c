# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: the error classes shared by the modules and the watcher.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Errors raised by the shared dyups layer.

Three families: ``ValidationError`` for input that must never reach nginx (raised
before any request is sent or any file is written), ``DyupsError`` for what the
dyups interface answered or failed to answer, and ``ConsulError`` for what the
Consul agent answered or failed to answer.
"""

from __future__ import annotations


class ValidationError(ValueError):
    """Input that breaks a rule; carries the offending value, the rule and its stable id.

    ``rule_id`` (like ``server.port_range``) names the rule independently of the message's
    wording; the Lua flavor answers with the same ids (tests/vectors/*.json hold both sides' cases).
    """

    def __init__(self, what: str, value: object, rule: str, rule_id: str | None = None) -> None:
        self.what = what
        self.value = value
        self.rule = rule
        self.rule_id = rule_id
        super().__init__(f"invalid {what} {value!r}: {rule}")


class TransportError(Exception):
    """No HTTP answer at all (refused, reset, timed out, TLS failure); ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class DyupsError(Exception):
    """The dyups interface could not do what was asked.

    ``status`` is the HTTP status (None when no answer came), ``body`` the
    answer's text, ``url`` the request's URL.
    """

    def __init__(self, message: str, url: str | None = None, status: int | None = None,
                 body: str | None = None) -> None:
        self.url = url
        self.status = status
        self.body = body
        super().__init__(message)


class DyupsUnavailable(DyupsError):
    """No answer: connection refused, reset or timed out."""


class DyupsRejected(DyupsError):
    """The interface refused a request: 400 from the Lua flavor, 500 from Tengine."""


class DyupsBusy(DyupsError):
    """409 (``dyups_trylock on``) still answered after the bounded retries."""


class DyupsProtocolError(DyupsError):
    """An answer that does not follow the wire contract."""


class ConsulError(Exception):
    """Consul could not answer what was asked.

    ``url`` is the request's URL (never with the token: the token travels in a header), ``status``
    the HTTP status or None when no answer came.
    """

    def __init__(self, message: str, url: str | None = None, status: int | None = None) -> None:
        self.url = url
        self.status = status
        super().__init__(message)


class ConsulUnavailable(ConsulError):
    """No answer from the agent: connection refused, reset, timed out, TLS failure."""


class ConsulTLSError(ConsulUnavailable):
    """No answer because the TLS handshake failed: the agent's certificate was not verified, or the agent
    refused the client certificate. The message names the option to set."""


class ConsulForbidden(ConsulError):
    """403, or an answer that ACLs visibly filtered: the ACL token is missing or lacks the rights."""


class ConsulRateLimited(ConsulError):
    """429: the agent limits this client's requests (``limits.http_max_conns_per_client`` or rate limits)."""


class ConsulServerError(ConsulError):
    """5xx: the agent answered but could not serve the request (no leader, RPC failure...)."""


class ConsulBadAnswer(ConsulError):
    """An answer that is not the expected JSON shape (or an unexpected status)."""
