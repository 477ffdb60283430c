# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The watcher's transport: the keep-alive transport the modules use too (module_utils/_http_keepalive.py)."""

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._http_keepalive import (  # noqa: F401
    STALE_CONNECTION, KeepAliveTransport)

__all__ = ["STALE_CONNECTION", "KeepAliveTransport"]
