# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Entry point: makes the collection importable when run from a checkout, then runs the CLI.

``python3 plugins/watcher --config watcher.yml`` (checkout) and ``python3 -m
ansible_collections.swallowkeeper.dyups.plugins.watcher`` (installed collection) both work.
"""

import importlib
import os
import sys
import types

PACKAGE = "ansible_collections.swallowkeeper.dyups"


def _bootstrap() -> None:
    """Register the collection's root as ``ansible_collections.swallowkeeper.dyups`` if not importable."""
    try:
        importlib.import_module(PACKAGE + ".plugins.module_utils._names")
        return
    except ImportError:
        pass
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parts = PACKAGE.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        module = sys.modules.get(name)
        if module is None:
            module = types.ModuleType(name)
            module.__path__ = []
            sys.modules[name] = module
            if depth > 1:
                setattr(sys.modules[".".join(parts[:depth - 1])], parts[depth - 1], module)
    collection = sys.modules[PACKAGE]
    if root not in list(collection.__path__):
        collection.__path__ = list(collection.__path__) + [root]


def _http_without_tls() -> None:
    """Import ``http.client`` without ``ssl``: it imports ``ssl`` (libssl and libcrypto, about 4 MB of
    RSS) only to define ``HTTPSConnection``, which the collection does not use
    (module_utils/_http_keepalive.py has its own TLS connection and imports ``ssl`` when an https URL
    is first asked for). The first import decides, so this runs before any other."""
    if "http.client" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]  # "import ssl" raises ImportError meanwhile
    try:
        importlib.import_module("http.client")
    finally:
        del sys.modules["ssl"]


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path = [p for p in sys.path if os.path.abspath(p) != os.path.dirname(os.path.abspath(__file__))]
    _http_without_tls()
    _bootstrap()
    from ansible_collections.swallowkeeper.dyups.plugins.watcher.cli import main

    sys.exit(main())
