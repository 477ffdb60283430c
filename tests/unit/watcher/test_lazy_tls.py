"""The watcher loads ``ssl`` only when a URL of its needs TLS (issue 22 item 4).

``http.client`` imports ``ssl`` (libssl and libcrypto: about 4 MB of the watcher's RSS) to define a
class the collection does not use; the watcher's entry (plugins/watcher/__main__.py) imports it
without, and the transport (module_utils/_http_keepalive.py) imports ``ssl`` for its own TLS
connection when an https URL is first asked for. On a4c1ad6 every watcher held ``ssl``.

Each case runs in a fresh interpreter (the first import of ``http.client`` decides), as the watcher's
entry starts: the entry module's code, then the watcher's modules. The https case talks to a real
TLS server of the standard library on loopback, with a certificate made for the test (openssl).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.consul_tls import self_signed

ROOT = Path(__file__).resolve().parents[3]

START_AS_THE_ENTRY = textwrap.dedent("""\
    import importlib.util, json, sys
    spec = importlib.util.spec_from_file_location("entry", {entry!r})
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)          # defines, runs nothing: __name__ is not "__main__"
    entry._http_without_tls()
    entry._bootstrap()
    from ansible_collections.swallowkeeper.dyups.plugins.watcher import cli, daemon  # noqa: F401
    loaded_at_start = "ssl" in sys.modules
""")

HTTPS_REQUEST = textwrap.dedent("""\
    import http.server, ssl, threading
    from ansible_collections.swallowkeeper.dyups.plugins.watcher.transport import KeepAliveTransport

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain({cert!r}, {key!r})
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    transport = KeepAliveTransport(verify={cert!r})
    url = "https://localhost:%d/v1/status/leader" % server.server_address[1]
    answers = [transport("GET", url, None, 5)[:2] for _unused in range(2)]
    refused = None
    try:
        KeepAliveTransport(verify=True)("GET", url, None, 5)   # the system's CAs do not know the test's certificate
    except Exception as exc:
        refused = type(exc).__name__
    transport.close()
    server.shutdown()
""")


def run(script):
    done = subprocess.run([sys.executable, "-c", script], cwd=str(ROOT), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_watcher_without_tls_never_loads_ssl():
    found = run(START_AS_THE_ENTRY.format(entry=str(ROOT / "plugins" / "watcher" / "__main__.py"))
                + 'print(json.dumps({"ssl": loaded_at_start, "tls_connection": hasattr(cli, "main")}))')
    assert found == {"ssl": False, "tls_connection": True}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test's certificate")
def test_an_https_url_still_works_and_verifies_after_a_start_without_ssl(tmp_path):
    cert, key = self_signed(tmp_path)
    found = run(START_AS_THE_ENTRY.format(entry=str(ROOT / "plugins" / "watcher" / "__main__.py"))
                + HTTPS_REQUEST.format(cert=str(cert), key=str(key))
                + 'print(json.dumps({"ssl": loaded_at_start, "answers": [[s, b.decode()] for s, b in answers],'
                  ' "refused": refused}))')
    assert found == {"ssl": False, "answers": [[200, "ok"], [200, "ok"]], "refused": "TransportError"}


DIGEST_AND_SECRET = textwrap.dedent("""\
    from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import body_digest
    from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics, StatusServer
    digest = body_digest(b'{"Node": "n1"}').hex()
    server = StatusServer("127.0.0.1:0", Metrics(), lambda: "", release_secret="s3cret")
    matches = [server.secret_matches(given) for given in ("s3cret", "s3creT", "", None)]
    server.server.server_close()
""")


def test_the_watcher_loads_no_libcrypto_for_its_digests_and_secret():
    """``hashlib`` and ``hmac`` load OpenSSL's libcrypto (``_hashlib``: 3.8 MB of RSS) for what the watcher
    uses of them, BLAKE2 and a constant-time compare, both built into CPython: on 3881fa2 every watcher held
    it. The digest is BLAKE2b's all the same, and the release secret still compares right."""
    import hashlib  # pylint: disable=import-outside-toplevel
    found = run(START_AS_THE_ENTRY.format(entry=str(ROOT / "plugins" / "watcher" / "__main__.py"))
                + DIGEST_AND_SECRET
                + 'print(json.dumps({"libcrypto": "_hashlib" in sys.modules, "digest": digest, "matches": matches}))')
    assert found == {"libcrypto": False, "digest": hashlib.blake2b(b'{"Node": "n1"}', digest_size=16).hexdigest(),
                     "matches": [True, False, False, False]}
