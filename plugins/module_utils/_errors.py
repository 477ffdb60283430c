# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: the error classes shared by the modules and the watcher.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Errors raised by the shared dyups layer.

Two families: ``ValidationError`` for input that must never reach nginx (raised
before any request is sent or any file is written), and ``DyupsError`` for what
the dyups interface answered or failed to answer.
"""

from __future__ import annotations


class ValidationError(ValueError):
    """Input that breaks a rule; carries the offending value and the rule."""

    def __init__(self, what, value, rule):
        self.what = what
        self.value = value
        self.rule = rule
        super().__init__(f"invalid {what} {value!r}: {rule}")


class TransportError(Exception):
    """No HTTP answer at all (refused, reset, timed out, TLS failure); ``reason`` says which."""

    def __init__(self, reason):
        self.reason = reason
        super().__init__(reason)


class DyupsError(Exception):
    """The dyups interface could not do what was asked.

    ``status`` is the HTTP status (None when no answer came), ``body`` the
    answer's text, ``url`` the request's URL.
    """

    def __init__(self, message, url=None, status=None, body=None):
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
