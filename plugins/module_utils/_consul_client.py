# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: the Consul HTTP client and blocking queries (modules and watcher).
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small read-only client for the Consul HTTP API, independent of the HTTP library.

The HTTP call is a *transport* (the same contract as the dyups client's):
``transport(method, url, body, timeout, extra_headers=None) -> (status, body_bytes, headers)`` with
lower-case header names, raising ``TransportError`` when no answer came. Modules pass
``_http_ansible.ansible_transport(...)``, the watcher kept-alive ``http.client`` connections, tests
``stdlib_transport`` (tests/support/http_stdlib.py).

What the answers become:

* 200 -> ``ConsulAnswer(data, index, url)``: ``data`` is the parsed JSON, ``index`` the integer from
  ``X-Consul-Index`` (None when the endpoint sends none);
* no answer -> ``ConsulUnavailable`` naming the URL; when the TLS handshake failed, its subclass
  ``ConsulTLSError`` saying which side refused and which option to set (``tls_hint``);
* 403 -> ``ConsulForbidden`` (the token is missing or lacks the rights);
* 429 -> ``ConsulRateLimited``; 5xx -> ``ConsulServerError``;
* any other status, a body that is not JSON, or JSON of the wrong shape -> ``ConsulBadAnswer``;
* an answer that ACLs visibly filtered -> ``ConsulForbidden`` (see "ACL filtering" below).

ACL filtering. With ACLs on, Consul (1.8.7, measured in tests/integration/test_consul_tls_acl.py)
answers 403 only for a token it does not know; a known token (or none: the anonymous token) that may
not read something gets a 200 with that part left out. So a reader cannot tell "nothing there" from
"nothing it may see" by the status. What is detected, from what every datacenter must have (its
servers, each a node with an instance of the ``consul`` service):

* ``/v1/catalog/services`` without the ``consul`` service (empty included): the token lacks
  ``service:read`` (``service_prefix ""``, or at least on ``consul``);
* ``/v1/catalog/nodes`` empty: the token lacks ``node:read``;
* ``/v1/health/service/NAME`` empty: ``/v1/health/service/consul`` is read once more; empty too means
  the token lacks ``node:read`` (Consul leaves out instances on nodes the token may not read; then
  ``/v1/catalog/nodes`` is empty too) or ``service:read``; otherwise the empty answer stands (the
  service went away between two reads).

Not detected: a token that may read ``consul`` and its nodes but not some other service or node
(``service_prefix "web-"``, ``node_prefix "edge-"``): those are left out as if absent. The policy in
docs/consul.md ("TLS and ACLs") grants read on every service and node, which is what the readers need.

The token travels in the ``X-Consul-Token`` header only: it is never put into a URL, an error
message, a log line or a ``repr``.

``BlockingQuery`` implements Consul's rules for long polls (see its docstring); ``resolve_token``
picks the token from the module option, a token file or ``CONSUL_HTTP_TOKEN``; ``consul_environment``
reads the connection settings the consul CLI reads from the environment (``CONSUL_HTTP_ADDR`` ...), for
the modules and the watcher to use where their own option is not given.
"""

from __future__ import annotations

import ipaddress
import json
import os
import posixpath
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

try:  # BLAKE2 is built into CPython (_blake2): ``hashlib`` would load OpenSSL's libcrypto too (3.8 MB of RSS)
    from _blake2 import blake2b
except ImportError:  # pragma: no cover  (another interpreter)
    from hashlib import blake2b
from urllib.parse import quote, urlencode, urlsplit

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import (
    ConsulBadAnswer, ConsulError, ConsulForbidden, ConsulRateLimited, ConsulServerError, ConsulTLSError,
    ConsulUnavailable, TransportError, ValidationError)

if TYPE_CHECKING:
    from ansible_collections.swallowkeeper.dyups.plugins.module_utils._http_ansible import Transport

DEFAULT_URL = "http://127.0.0.1:8500"
TOKEN_ENV = "CONSUL_HTTP_TOKEN"
TOKEN_HEADER = "X-Consul-Token"
MAX_WAIT = 600.0            # Consul caps ``wait`` at 10 minutes
DEFAULT_WAIT = 300.0        # Consul's own default when ``wait`` is not sent
DEFAULT_MIN_INTERVAL = 0.1  # sustained: at most one query start per this many seconds per BlockingQuery
DEFAULT_BURST = 5           # this many query starts may follow each other without waiting
_BODY_SHOWN = 200


@dataclass(frozen=True)
class ConsulAnswer:
    """One successful answer: parsed JSON, the ``X-Consul-Index`` (int or None), the URL asked.

    ``last_contact``: seconds since the answering server last heard from the leader
    (``X-Consul-LastContact``; 0 from the leader; None when not sent). ``reread_after``: set when a
    ``stale`` answer was too old for ``max_stale`` (ConsulClient) and this answer is its re-read from
    the leader: the discarded answer's ``last_contact`` (``inf`` when its server knew no leader or
    its header was not a number). ``digest``: the body's digest, only for a conditional read (``get``'s
    ``known_digest``); ``data`` is None then when the body had that digest (it was not parsed).
    """

    data: Any
    index: int | None
    url: str
    last_contact: float | None = None
    reread_after: float | None = None
    digest: bytes | None = None


NAME_KEYED_ANSWERS = frozenset(("/v1/catalog/services",))
CONSUL_SERVICE = "consul"   # every datacenter has it: one instance per server

# What a reader sets, per piece of TLS material: the module option, the watcher's setting, the environment.
TLS_CA_SETTING = "ca_path (watcher: consul_ca_path; environment: CONSUL_CACERT)"
TLS_CLIENT_SETTING = ("client_cert and client_key (watcher: consul_client_cert and consul_client_key; environment: "
                      "CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY)")
TOKEN_SETTING = "token, token_file or CONSUL_HTTP_TOKEN (watcher: consul_token_file or CONSUL_HTTP_TOKEN)"
_SERVER_NOT_VERIFIED = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed")
_CLIENT_REFUSED = ("ALERT_BAD_CERTIFICATE", "ALERT_CERTIFICATE_REQUIRED", "ALERT_UNKNOWN_CA",
                   "ALERT_HANDSHAKE_FAILURE", "ALERT_CERTIFICATE_UNKNOWN", "ALERT_ACCESS_DENIED")


def tls_hint(reason: object) -> str | None:
    """What a failed request's ``TransportError.reason`` means for TLS, or None when it is not about TLS.

    Measured against Consul 1.8.7 with ``verify_incoming`` (tests/integration/test_consul_tls_acl.py):
    no CA or the wrong one -> ``CERTIFICATE_VERIFY_FAILED``; no client certificate or one of another CA
    -> the agent's ``bad certificate`` alert; an https URL on the plain http port -> ``WRONG_VERSION_NUMBER``.
    """
    text = str(reason or "")
    if any(marker in text for marker in _SERVER_NOT_VERIFIED):
        if "mismatch" in text:  # "Hostname mismatch" / "IP address mismatch, certificate is not valid for ..."
            return ("TLS handshake failed: the agent's certificate does not name the host of the Consul URL; "
                    "use a host name or address the certificate lists")
        return ("TLS handshake failed: the agent's certificate could not be verified (certificate verification "
                f"failed); set {TLS_CA_SETTING} to the CA that signed the agent's certificate")
    if any(marker in text for marker in _CLIENT_REFUSED):
        return ("TLS handshake failed: the agent refused the client certificate (none was sent, or it is not "
                f"signed by a CA the agent trusts: the agent verifies incoming certificates); set {TLS_CLIENT_SETTING} "
                "to a certificate and key signed by the agent's CA")
    if "WRONG_VERSION_NUMBER" in text:
        return "TLS handshake failed: this port does not speak TLS; use http:// or the agent's https port"
    return None


def resolve_token(token: str | None = None, token_file: str | None = None,
                  environ: Mapping[str, str] | None = None) -> str | None:
    """The ACL token to send, or None: ``token`` > the stripped content of ``token_file`` > ``CONSUL_HTTP_TOKEN``.

    An explicit ``token_file`` that cannot be read or is empty raises ValidationError (naming the
    file, never its content): a misconfigured file must not silently fall back to another token.
    """
    if token:
        return token
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as handle:
                value = handle.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValidationError("token_file", token_file, f"cannot be read: {exc.__class__.__name__}: "
                                                            f"{getattr(exc, 'strerror', None) or exc}") from None
        if not value:
            raise ValidationError("token_file", token_file, "is empty")
        return value
    value = (os.environ if environ is None else environ).get(TOKEN_ENV, "").strip()
    return value or None


# The consul CLI's environment variables (as its api package reads them) -> the name of our setting.
ENV_ADDR = "CONSUL_HTTP_ADDR"
ENV_SSL = "CONSUL_HTTP_SSL"
ENV_TOKEN_FILE = "CONSUL_HTTP_TOKEN_FILE"
ENV_CACERT = "CONSUL_CACERT"
ENV_CLIENT_CERT = "CONSUL_CLIENT_CERT"
ENV_CLIENT_KEY = "CONSUL_CLIENT_KEY"
ENV_SSL_VERIFY = "CONSUL_HTTP_SSL_VERIFY"
_ENV_PATHS = (("token_file", ENV_TOKEN_FILE), ("ca_path", ENV_CACERT), ("client_cert", ENV_CLIENT_CERT),
              ("client_key", ENV_CLIENT_KEY))
_TRUE = ("1", "t", "true", "yes", "on")   # Go's strconv.ParseBool, plus yes/on
_FALSE = ("0", "f", "false", "no", "off")


def _env_bool(name: str, value: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValidationError(name, value, "expected true or false (1/0, t/f, true/false)")


def consul_url_from_address(address: str, ssl: bool = False) -> str:
    """The base URL for a ``CONSUL_HTTP_ADDR`` value: ``host:port`` (http, or https when ``ssl``),
    ``http://...`` or ``https://...``. As the consul CLI: ``ssl`` never turns an address back to http.
    A unix socket (``unix://``) is refused: the collection speaks HTTP over TCP only."""
    text = address.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "http", text
    scheme = scheme.lower()
    if scheme == "unix":
        raise ValidationError(ENV_ADDR, address, "unix sockets are not supported; give host:port or a URL")
    if scheme not in ("http", "https"):
        raise ValidationError(ENV_ADDR, address, "expected host:port, http://host:port or https://host:port")
    rest = rest.rstrip("/")
    if not rest or any(char.isspace() for char in rest):
        raise ValidationError(ENV_ADDR, address, "expected host:port, http://host:port or https://host:port")
    return f"{'https' if ssl or scheme == 'https' else 'http'}://{rest}"


def consul_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The connection settings the consul CLI takes from the environment, for options not given.

    Returns a dict with only the keys whose variable is set (non-empty): ``url`` (``CONSUL_HTTP_ADDR``,
    https when ``CONSUL_HTTP_SSL`` is true), ``token_file`` (``CONSUL_HTTP_TOKEN_FILE``), ``ca_path``
    (``CONSUL_CACERT``), ``client_cert`` (``CONSUL_CLIENT_CERT``), ``client_key`` (``CONSUL_CLIENT_KEY``),
    ``validate_certs`` (``CONSUL_HTTP_SSL_VERIFY``). ``CONSUL_HTTP_TOKEN`` is read by ``resolve_token``,
    after any token file (as the consul CLI: a token file wins over the token variable). A value that
    cannot be used raises ValidationError naming the variable.
    """
    env = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    ssl = _env_bool(ENV_SSL, env[ENV_SSL]) if env.get(ENV_SSL, "").strip() else False
    if env.get(ENV_ADDR, "").strip():
        found["url"] = consul_url_from_address(env[ENV_ADDR], ssl=ssl)
    elif ssl:
        found["url"] = consul_url_from_address(DEFAULT_URL.replace("http://", ""), ssl=True)
    for key, name in _ENV_PATHS:
        if env.get(name, "").strip():
            found[key] = env[name].strip()
    if env.get(ENV_SSL_VERIFY, "").strip():
        found["validate_certs"] = _env_bool(ENV_SSL_VERIFY, env[ENV_SSL_VERIFY])
    return found


def _staleness(headers: Mapping[str, str]) -> float | None:
    """Seconds since the answering server last heard from the Raft leader: ``X-Consul-LastContact``
    (milliseconds; 0 from the leader itself) / 1000; ``inf`` when the server knew no leader
    (``X-Consul-KnownLeader: false``) or the header is not a whole number (nothing vouches for the
    answer); None when the answer has no such header."""
    raw = headers.get("x-consul-lastcontact")
    if str(headers.get("x-consul-knownleader", "")).strip().lower() == "false":
        return float("inf")
    if raw is None:
        return None
    text = str(raw).strip()
    return int(text) / 1000.0 if text.isdigit() else float("inf")


def _heard(last_contact: float) -> str:
    """How a server's staleness reads in a message."""
    if last_contact == float("inf"):
        return "knew no leader"
    return f"last heard from the leader {last_contact:.3f}s before"


def format_wait(seconds: float) -> str:
    """Consul's duration syntax for ``wait``, in whole milliseconds, capped at 10 minutes."""
    milliseconds = max(1, int(round(min(float(seconds), MAX_WAIT) * 1000)))
    return f"{milliseconds}ms"


UNREADABLE_NAME = ("Consul answers a redirect, not the service, for /v1/health/service/NAME when NAME is not a clean "
                   "URL path (such as x//y, a/../b or ..); such a name cannot name an upstream either")


def body_digest(body: bytes) -> bytes:
    """A 16-byte BLAKE2b digest of an answer's body: equal digests are equal bodies (see ConsulClient.get,
    ``known_digest``)."""
    return blake2b(body if isinstance(body, bytes) else str(body).encode("utf-8"), digest_size=16).digest()


def path_segment_safe(name: str) -> bool:
    """True when Consul serves ``/v1/.../NAME`` for this name as it is. Consul's HTTP server (Go's
    ServeMux) decodes the path and, when cleaning it changes it (``x//y``, ``a/../b``, ``..``, ``.``,
    ``a/.``), answers 301 to the cleaned path instead: another name, or none. Consul accepts such
    service and node names at registration, so they exist; they cannot be read by a path that
    names them (measured on 1.8.7: docs/watcher.md, "Names Consul accepts")."""
    if "/" not in name:  # nearly every name: only "." and ".." change then
        return name not in (".", "..")
    path = "/p/" + name
    cleaned = posixpath.normpath(path)
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned == path


class ConsulClient:
    """Read-only calls against one Consul agent's HTTP API.

    ``url`` is the agent's base URL (``http://127.0.0.1:8500``, a path prefix is kept);
    ``datacenter`` adds ``dc=``; ``stale=True`` adds ``stale`` to every read (any server may
    answer; use it for long polls, not for one-shot reads that must be current); ``timeout`` is
    for a request that does not block (a blocking one gets its ``wait`` plus Consul's jitter on top).
    Safe to share between threads when the transport is.

    ``max_stale`` (seconds; None or 0: no bound) bounds what a ``stale`` read may return, as
    consul-template's ``max_stale``: an answer whose server last heard from the leader longer ago
    (``X-Consul-LastContact``), that knew no leader (``X-Consul-KnownLeader: false``) or whose
    LastContact is not a number is not used; the same path is read again at once without ``stale``
    and without blocking (the leader answers, through the agent), and that answer is returned with
    ``reread_after`` set. When the leader cannot be reached that read fails as any read does
    (ConsulServerError "No cluster leader", say): a reader keeps its last good state and says so,
    instead of taking old data for current. ``on_too_stale(url, seconds)`` is called before each
    such re-read (the watcher's metric and log line).
    """

    def __init__(self, url: str | None, transport: Transport, token: str | None = None, datacenter: str | None = None,
                 timeout: float = 10.0, stale: bool = False, object_hook: Callable[[dict], Any] | None = None,
                 max_stale: float | None = None, on_too_stale: Callable[[str, float], Any] | None = None) -> None:
        self.url = (url or DEFAULT_URL).rstrip("/")
        self.object_hook = object_hook  # json.loads' object_hook: a long-running reader slims what it keeps
        self.transport = transport
        self._token = token or None
        self.datacenter = datacenter or None
        self.timeout = float(timeout)
        self.stale = bool(stale)
        self.max_stale = float(max_stale) if max_stale else None
        self.on_too_stale = on_too_stale  # called (url, last contact in seconds) before each such re-read

    def __repr__(self) -> str:
        return (f"ConsulClient(url={self.url!r}, token={'<set>' if self._token else None}, "
                f"datacenter={self.datacenter!r}, stale={self.stale})")

    def cleartext_token_warning(self) -> str | None:
        """The warning to give when a token goes to the agent in clear text over a network: ``http://`` to a
        host that is not loopback (None otherwise). Never holds the token."""
        if not self._token:
            return None
        parts = urlsplit(self.url)
        host = (parts.hostname or "").lower()
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if parts.scheme != "http" or loopback:
            return None
        return (f"the Consul token is sent in clear text to {self.url} (plain http to a host that is not loopback): "
                "anyone on the path can read it; use https (ca_path) or the local agent")

    def url_for(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        """The full URL of ``path`` with ``params`` (a dict; None values dropped). Never holds the token."""
        query = [(key, "" if value is True else str(value)) for key, value in (params or {}).items()
                 if value is not None and value is not False]
        return self.url + path + ("?" + urlencode(query) if query else "")

    def _redact(self, text: str) -> str:
        if self._token and text:
            text = text.replace(self._token, "<redacted>")
        return text

    def get(self, path: str, params: Mapping[str, Any] | None = None, index: int | None = None,
            wait: float | None = None, stale: bool | None = None,
            known_digest: bytes | None = None, object_hook: Callable[[dict], Any] | None = None) -> ConsulAnswer:
        """GET ``path``; with ``index`` > 0 it is a blocking query that waits up to ``wait`` seconds.

        ``object_hook``: json.loads' object_hook for this read (None: the client's ``object_hook``).

        ``known_digest`` makes it a conditional read: the answer carries the body's digest (``body_digest``),
        and when that equals ``known_digest`` (b"": none known yet) the body is not parsed and ``data`` is
        None: the caller already has what it says.

        Returns a ConsulAnswer; raises a ConsulError subclass (see the module docstring).
        """
        query = dict(params or {})
        if self.datacenter:
            query.setdefault("dc", self.datacenter)
        stale_read = self.stale if stale is None else stale
        if stale_read:
            query["stale"] = True
        timeout = self.timeout
        if index:
            query["index"] = int(index)
            seconds = min(float(wait if wait is not None else DEFAULT_WAIT), MAX_WAIT)
            query["wait"] = format_wait(seconds)
            timeout += seconds + seconds / 16.0
        url = self.url_for(path, query)
        headers = {TOKEN_HEADER: self._token} if self._token else {}
        try:
            status, raw, answer_headers = self.transport("GET", url, None, timeout, headers)
        except TransportError as exc:
            reason = self._redact(exc.reason)
            hint = tls_hint(reason)
            if hint:
                raise ConsulTLSError(f"the Consul agent at {self.url} did not answer GET {url}: {reason}: {hint}",
                                     url=url) from None
            raise ConsulUnavailable(f"the Consul agent at {self.url} did not answer GET {url}: {reason}",
                                    url=url) from None
        raw = raw or b""
        if status != 200:
            raise self.status_error(url, status, raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw)
        digest = body_digest(raw) if known_digest is not None else None
        if digest is not None and digest == known_digest:
            return ConsulAnswer(data=None, index=None, url=url, digest=digest)
        try:
            # bytes as they are: no decoded copy of a big body. Answers keyed by names users choose
            # (the catalog: {service: tags}) are never slimmed: a service may be called "Name".
            hook = None if path in NAME_KEYED_ANSWERS else object_hook or self.object_hook
            data = json.loads(raw, object_hook=hook)
        except ValueError:
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            raise ConsulBadAnswer(f"GET {url} answered 200 but not JSON: {self.shown(text)!r}",
                                  url=url, status=status) from None
        raw_index = (answer_headers or {}).get("x-consul-index")
        index_value = None
        if raw_index is not None:
            try:
                index_value = int(str(raw_index).strip())
            except ValueError:
                raise ConsulBadAnswer(f"GET {url}: X-Consul-Index {self.shown(str(raw_index))!r} is not a number",
                                      url=url, status=status) from None
            if index_value < 0:
                raise ConsulBadAnswer(f"GET {url}: X-Consul-Index {index_value} is negative", url=url, status=status)
        last_contact = _staleness(answer_headers or {})
        if stale_read and self.max_stale is not None and last_contact is not None and last_contact > self.max_stale:
            if self.on_too_stale is not None:
                self.on_too_stale(url, last_contact)
            try:
                fresh = self.get(path, params=params, stale=False, known_digest=known_digest,  # no index: a plain read, it never blocks
                                 object_hook=object_hook)
            except ConsulError as exc:
                raise type(exc)(f"{exc} (read again without stale because the answer of GET {url} came from a "
                                f"server that {_heard(last_contact)}, above max_stale {self.max_stale:g}s)",
                                url=exc.url, status=exc.status) from None
            return ConsulAnswer(data=fresh.data, index=fresh.index, url=fresh.url, last_contact=fresh.last_contact,
                                reread_after=last_contact, digest=fresh.digest)
        return ConsulAnswer(data=data, index=index_value, url=url, last_contact=last_contact, digest=digest)

    def shown(self, text: str) -> str:
        """``text`` as an error shows it: stripped, without the token, shortened."""
        text = self._redact(text.strip())
        return text if len(text) <= _BODY_SHOWN else text[:_BODY_SHOWN] + "..."

    def status_error(self, url: str, status: int, text: str, method: str = "GET",
                     rights: str = f"read rights on the services and nodes (set {TOKEN_SETTING})") -> ConsulError:
        """The error for an answer of ``status`` (not 200) to ``method url``, its body shown shortened and
        without the token; ``rights``: what a 403 says the token needs."""
        said = self.shown(text)
        if status == 403:
            hint = ("the ACL token is missing" if self._token is None else
                    "the ACL token was refused or lacks the rights for this request")
            return ConsulForbidden(f"Consul refused {method} {url} (403 {said!r}): {hint}; it needs {rights}",
                                   url=url, status=status)
        if status == 429:
            return ConsulRateLimited(f"Consul limited {method} {url} (429 {said!r}): too many requests from this "
                                     "client; retry later", url=url, status=status)
        if 500 <= status <= 599:
            return ConsulServerError(f"Consul failed {method} {url} ({status} {said!r})", url=url, status=status)
        hint = " (is this a Consul agent's HTTP API?)" if status == 404 else ""
        if status == 400 and "HTTPS server" in text:  # Go's answer to plain HTTP on a TLS port
            hint = " (this is the agent's HTTPS port: use an https:// URL)"
        return ConsulBadAnswer(f"{method} {url} answered {status} {said!r}{hint}", url=url, status=status)

    # -- endpoints -----------------------------------------------------------------------------------
    def read(self, path: str, params: Mapping[str, Any] | None = None, index: int | None = None,
             wait: float | None = None, stale: bool | None = None,
             known_digest: bytes | None = None, object_hook: Callable[[dict], Any] | None = None) -> ConsulAnswer:
        """``get`` plus the shape check of the endpoints this project reads (others: ``get`` unchecked).

        ``/v1/catalog/services``: a JSON object of lists of strings, with the ``consul`` service.
        ``/v1/health/service/NAME`` and ``/v1/health/state/any``: a JSON list of objects.
        ``/v1/catalog/nodes``: a non-empty JSON list of objects.
        What looks filtered by ACLs is raised as ConsulForbidden (module docstring, "ACL filtering").
        ``/v1/catalog/node-services/NODE``: {Node: object, Services: [objects]}, a node that is gone
        (both null) read as no services.
        A conditional read (``known_digest``, see ``get``) whose body is unchanged is not checked again.
        """
        answer = self.get(path, params=params, index=index, wait=wait, stale=stale, known_digest=known_digest,
                          object_hook=object_hook)
        if answer.data is None and answer.digest is not None and answer.digest == known_digest:
            return answer
        if path == "/v1/catalog/services":
            return self._check_catalog(answer)
        if path.startswith("/v1/health/service/"):
            self._expect_objects(answer, "a JSON list of service entries")
            if not answer.data:
                self._check_node_rights(path, answer, stale)
            return answer
        if path.startswith("/v1/health/state/") or path.startswith("/v1/health/checks/"):
            return self._expect_objects(answer, "a JSON list of checks")
        if path == "/v1/catalog/nodes":
            self._expect_objects(answer, "a JSON list of nodes")
            if not answer.data:
                raise self._filtered(answer.url, "listed no node at all, not even the servers'", "node:read")
            return answer
        if path.startswith("/v1/catalog/node-services/"):
            self._expect(answer, dict, "a JSON object")
            # a node that left between the node list and this read: {"Node": null, "Services": null}
            node, services = answer.data.get("Node") or {}, answer.data.get("Services") or []
            answer = ConsulAnswer(data={"Node": node, "Services": services}, index=answer.index, url=answer.url,
                                  digest=answer.digest)
            if not (isinstance(node, dict) and isinstance(services, list)
                    and all(isinstance(service, dict) for service in services)):
                raise ConsulBadAnswer(f"GET {answer.url} did not answer {{Node: object, Services: [objects]}}",
                                      url=answer.url, status=200)
        return answer

    def _expect(self, answer: ConsulAnswer, kind: type, what: str) -> ConsulAnswer:
        if not isinstance(answer.data, kind):
            raise ConsulBadAnswer(f"GET {answer.url} did not answer {what} but {type(answer.data).__name__}",
                                  url=answer.url, status=200)
        return answer

    def _expect_objects(self, answer: ConsulAnswer, what: str) -> ConsulAnswer:
        self._expect(answer, list, what)
        if not all(isinstance(item, dict) for item in answer.data):
            raise ConsulBadAnswer(f"GET {answer.url} did not answer {what}: an item is not a JSON object",
                                  url=answer.url, status=200)
        return answer

    def _check_catalog(self, answer: ConsulAnswer) -> ConsulAnswer:
        self._expect(answer, dict, "a JSON object of services")
        for name, tags in answer.data.items():
            if tags is not None and not (isinstance(tags, list) and all(isinstance(tag, str) for tag in tags)):
                raise ConsulBadAnswer(f"GET {answer.url}: the tags of {name!r} are not a list of strings",
                                      url=answer.url, status=200)
        if CONSUL_SERVICE not in answer.data:
            what = ("listed no service at all, not even 'consul'" if not answer.data else
                    "did not list the 'consul' service, which every datacenter has")
            raise self._filtered(answer.url, what, "service:read")
        return answer

    def _check_node_rights(self, path: str, answer: ConsulAnswer, stale: bool | None) -> None:
        """An empty ``/v1/health/service/NAME``: read ``/v1/health/service/consul``; empty too ->
        ConsulForbidden, naming node:read when ``/v1/catalog/nodes`` is empty as well, else service:read."""
        probe_path = "/v1/health/service/" + CONSUL_SERVICE
        probe = answer if path == probe_path else self.get(probe_path, stale=stale)
        if isinstance(probe.data, list) and not probe.data:
            nodes = self.get("/v1/catalog/nodes", stale=stale).data
            right = "node:read" if isinstance(nodes, list) and not nodes else "service:read"
            raise self._filtered(answer.url, "listed no instance, and neither did /v1/health/service/consul "
                                             "(every server has one)", right)

    def _filtered(self, url: str, what: str, right: str) -> ConsulForbidden:
        """The ConsulForbidden for an answer that ACLs filtered (``right``: the right the token lacks)."""
        hint = ("no ACL token was sent (the anonymous token may not read it)" if self._token is None else
                f"the ACL token lacks {right} (service_prefix \"\" and node_prefix \"\" read)")
        return ConsulForbidden(f"GET {url} {what}: {hint}; with ACLs enabled Consul leaves out what a token may "
                               f"not read instead of refusing, so this answer is not used (set {TOKEN_SETTING})",
                               url=url, status=200)

    def catalog_services(self, index: int | None = None, wait: float | None = None, stale: bool | None = None) -> ConsulAnswer:
        """``/v1/catalog/services``: data is {service name: [tags]} (see ``read`` for the checks)."""
        return self.read("/v1/catalog/services", index=index, wait=wait, stale=stale)

    def health_service(self, name: str, index: int | None = None, wait: float | None = None, stale: bool | None = None) -> ConsulAnswer:
        """``/v1/health/service/NAME``: data is a list of {Node, Service, Checks} (all instances, any health)."""
        return self.read("/v1/health/service/" + quote(str(name), safe=""), index=index, wait=wait, stale=stale)

    def health_state_any(self, index: int | None = None, wait: float | None = None, stale: bool | None = None,
                         object_hook: Callable[[dict], Any] | None = None) -> ConsulAnswer:
        """``/v1/health/state/any``: data is a list of every check in the datacenter (``object_hook``: see get)."""
        return self.read("/v1/health/state/any", index=index, wait=wait, stale=stale, object_hook=object_hook)

    def catalog_nodes(self) -> ConsulAnswer:
        """``/v1/catalog/nodes``: data is a list of {Node, Address, ...}, every node in the datacenter."""
        return self.read("/v1/catalog/nodes")

    def catalog_node_services(self, node: str, known_digest: bytes | None = None) -> ConsulAnswer:
        """``/v1/catalog/node-services/NODE`` (Consul 1.7+): data is {Node: {...}, Services: [{...}]},
        every service instance on that node (no checks); None when ``known_digest`` is the body's (see get)."""
        return self.read("/v1/catalog/node-services/" + quote(str(node), safe=""), known_digest=known_digest)


@dataclass(frozen=True)
class PollResult:
    """What one ``BlockingQuery.poll()`` saw.

    ``changed`` is False for a spurious wake-up or a timeout (the index did not move); ``reset`` names
    why the index was set back to 0 (``"backwards"``, ``"zero"``) or is None.
    """

    data: Any
    index: int
    changed: bool
    reset: str | None = None
    last_contact: float | None = None
    reread_after: float | None = None


class BlockingQuery:
    """One long poll on one endpoint, following Consul's rules for blocking queries.

    Intended use (the watcher runs two of these, one per thread, on ``/v1/health/state/any`` and
    ``/v1/catalog/services``)::

        query = BlockingQuery(client, "/v1/health/state/any", wait=300, sleep=stop_event.wait)
        while not stop_event.is_set():
            result = query.poll()          # raises ConsulError; back off, then poll again
            if result.changed:
                handle(result.data)

    The rules it keeps:

    * the first poll (and the one after a reset) is a plain read (no ``index``); every next one sends
      the last ``X-Consul-Index`` as ``index`` and ``wait`` (capped at 10 minutes);
    * an answer with the same index is a spurious wake-up or a timeout: ``changed`` is False;
    * after no answer at all (the agent down or restarting) the next poll is a plain read, so a
      restarted agent with a smaller index is noticed at once;
    * an index that went backwards (new leader, restored snapshot) or is 0 resets the index to 0, so
      the next poll reads afresh instead of waiting for a stale larger index; that answer's data is
      current and is reported as changed;
    * a poll after an answer with a new index starts at once (a change in the meantime is seen at
      once); a poll after a timeout, a spurious wake-up, a reset or an error is paced by a token
      bucket: ``burst`` back to back, then one per ``min_interval`` on average, so an endpoint that
      answers at once every time (index 0, say) costs at most 1/min_interval requests a second;
    * ``stale`` (None: the client's setting) lets any server answer; an answer the client re-read
      from the leader because it was too stale (``max_stale``, see ConsulClient) sends the polls of
      the next ``wait`` seconds to the leader too (without ``stale``): a server that lost the leader
      would otherwise hold the next blocking query until its ``wait`` ends, seeing no change.
      (One that loses the leader while a query is parked on it answers when that ``wait`` ends.)
    * answers are checked with ``client.read`` (shape per endpoint; an empty catalog is
      ConsulForbidden), so a watcher never mistakes an ACL-filtered answer for "all gone".

    ``clock`` and ``sleep`` are injectable (unit tests; ``sleep=stop_event.wait`` makes the pause
    interruptible). One instance belongs to one thread at a time; it holds no global state, and
    several instances may share one ConsulClient.
    """

    def __init__(self, client: ConsulClient, path: str, params: Mapping[str, Any] | None = None,
                 wait: float = DEFAULT_WAIT, min_interval: float = DEFAULT_MIN_INTERVAL, stale: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Any] = time.sleep,
                 burst: int = DEFAULT_BURST) -> None:
        if not wait or wait <= 0:
            raise ValueError("wait must be above 0 seconds")
        if min_interval < 0:
            raise ValueError("min_interval must not be negative")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.client = client
        self.path = path
        self.params = dict(params or {})
        self.wait = min(float(wait), MAX_WAIT)
        self.min_interval = float(min_interval)
        self.stale = stale
        self.clock = clock
        self.sleep = sleep
        self.index = 0           # what the next poll sends (0: a plain read)
        self.last_index: int | None = None   # the index of the last answer
        self.burst = int(burst)
        self._tokens = float(self.burst)
        self._last_start: float | None = None
        self._productive = False
        self._leader_until: float | None = None  # polls go to the leader until then (after a too-stale answer)

    def _pace(self) -> None:
        """A token bucket for polls that follow an unproductive one.

        A poll that follows an answer with a new index starts at once: the change it brings is real
        work, and its cost is bounded by Consul's own rate of change. A poll that follows a timeout,
        a spurious wake-up, an index reset or an error takes a token: ``burst`` of them may start back
        to back, then one per ``min_interval`` on average, so an endpoint that answers at once every
        time (index 0, say) costs at most 1/min_interval requests a second.
        """
        now = self.clock()
        if self.min_interval <= 0 or self._productive:
            self._last_start = now
            return
        if self._last_start is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last_start) / self.min_interval)
        if self._tokens < 1:
            self.sleep((1 - self._tokens) * self.min_interval)
            now = self.clock()
            self._tokens = 1.0
        self._tokens -= 1
        self._last_start = now

    def poll(self) -> PollResult:
        """One query; returns a PollResult, raises what the client raises.

        After ConsulUnavailable (no answer at all) the next poll is a plain read: the agent may have
        been restarted with a smaller index, and blocking on the old one would wait out the whole
        ``wait`` before noticing. After any other error the index is kept.
        """
        self._pace()
        self._productive = False
        fetch = getattr(self.client, "read", None) or self.client.get
        stale = self.stale
        if self._leader_until is not None:
            if self.clock() < self._leader_until:
                stale = False
            else:
                self._leader_until = None
        try:
            answer = fetch(self.path, params=self.params, index=self.index or None,
                           wait=self.wait if self.index else None, stale=stale)
        except ConsulUnavailable:
            self.index = 0
            raise
        reread_after = getattr(answer, "reread_after", None)
        if reread_after is not None:
            self._leader_until = self.clock() + self.wait
        new = answer.index
        if new is None:
            raise ConsulBadAnswer(f"GET {answer.url} sent no X-Consul-Index: it cannot be used as a blocking query",
                                  url=answer.url, status=200)
        reset = None
        if new == 0:
            reset = "zero"
        elif self.last_index is not None and new < self.last_index:
            reset = "backwards"
        changed = reset is not None or new != self.last_index
        self._productive = changed and reset is None and self.last_index is not None
        self.index = 0 if reset else new
        self.last_index = new
        return PollResult(data=answer.data, index=new, changed=changed, reset=reset,
                          last_contact=getattr(answer, "last_contact", None), reread_after=reread_after)
