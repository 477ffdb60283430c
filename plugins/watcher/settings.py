# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every watcher setting: name, default, meaning. The config file and the flags use the same names.

The config file is YAML (``.yml``/``.yaml``, needs PyYAML) or JSON; keys are the option names below.
A flag given on the command line wins over the file; the file wins over the default. SIGHUP reads the
file again (flags still win). The Consul token is read from ``consul_token_file`` or the environment
variable ``CONSUL_HTTP_TOKEN``, never from a flag (flags are visible to every user in ``ps``).

The Consul connection settings that neither a flag nor the file gives are taken from the consul CLI's
environment variables, as the modules do (``_consul_client.consul_environment``): ``consul_url`` from
``CONSUL_HTTP_ADDR`` (``host:port`` or a URL; ``CONSUL_HTTP_SSL=true`` means https),
``consul_token_file`` from ``CONSUL_HTTP_TOKEN_FILE``, ``consul_ca_path`` from ``CONSUL_CACERT``,
``consul_client_cert``/``consul_client_key`` from ``CONSUL_CLIENT_CERT``/``CONSUL_CLIENT_KEY``,
``consul_validate_certs`` from ``CONSUL_HTTP_SSL_VERIFY``. So: flag > file > environment > default.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import consul_environment
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._directives import parse_directives
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_options import check_api_url
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import validate_name
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._reserved import (
    Reserved, ReservedNamesUnknown, reserved_from)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._server_policy import ServerPolicy, read_host_networks
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import split_listen
from ansible_collections.swallowkeeper.dyups.plugins.watcher import zone_fit

ZERO_INSTANCE_POLICIES = ("keep", "down", "delete")
MAX_REMOVAL_GUARD_WINDOW = 3600.0  # an hour: older removals are no one mass event (and each sync reads the window)


class SettingsError(ValueError):
    """A setting that cannot be used; the message names it."""


@dataclass(frozen=True)
class Option:
    name: str
    default: object
    kind: type
    help: str


OPTIONS = (
    Option("consul_url", "http://127.0.0.1:8500", str, "the local Consul agent's HTTP API (else CONSUL_HTTP_ADDR)"),
    Option("consul_token_file", None, str, "file holding the Consul ACL token (else CONSUL_HTTP_TOKEN_FILE, "
                                           "else the token in CONSUL_HTTP_TOKEN)"),
    Option("consul_datacenter", None, str, "datacenter to read (default: the agent's)"),
    Option("consul_timeout", 10.0, float, "seconds for a Consul request that does not block"),
    Option("consul_wait", 300.0, float, "seconds a blocking query may wait (Consul caps it at 600)"),
    Option("consul_stale", False, bool, "let any Consul server answer the blocking queries (a follower answers "
                                        "a change 50-100 ms after the leader)"),
    Option("consul_max_stale", 2.0, float, "with consul_stale: an answer from a server that last heard from the "
                                           "Consul leader longer ago than this many seconds (or knew no leader) "
                                           "is read again from the leader (0: no bound)"),
    Option("consul_ca_path", None, str, "CA bundle for an https consul_url (else CONSUL_CACERT)"),
    Option("consul_client_cert", None, str, "client certificate for an https consul_url (else CONSUL_CLIENT_CERT)"),
    Option("consul_client_key", None, str, "client key for an https consul_url (else CONSUL_CLIENT_KEY)"),
    Option("consul_validate_certs", True, bool, "verify the Consul agent's TLS certificate (else "
                                                "CONSUL_HTTP_SSL_VERIFY)"),
    Option("consul_resync_interval", 300.0, float, "seconds between full reads of every service (safety net)"),
    Option("tag_key", "gray", str, "KEY of KEY=TAG service tags that select upstream Service_TAG"),
    Option("include", [], list, "only these services (empty: all)"),
    Option("exclude", ["consul"], list, "never these services"),
    Option("prefix", "", str, "only services whose name starts with this"),
    Option("include_warning", False, bool, "count Consul's warning state as passing"),
    Option("dyups_url", "http://127.0.0.1:18882", str,
           "the dyups interface: http://HOST:PORT, or unix:/PATH of its socket"),
    Option("dyups_secret_file", None, str, "file holding the interface's shared secret, sent as X-Dyups-Secret "
                                           "(an interface on TCP with tengine_dyups_api_secret)"),
    Option("dyups_timeout", 5.0, float, "seconds for a dyups request"),
    Option("nginx_pid_file", None, str, "the nginx master's pid file: new worker processes (a respawn after a "
                                        "crash, a reload) are noticed and every worker is brought back to the "
                                        "applied state; the drift check reads every worker (unset: neither)"),
    Option("nginx_poll_interval", 0.2, float, "seconds between reads of the nginx processes (nginx_pid_file)"),
    Option("upstream_file", "/var/lib/swallowkeeper-dyups/upstreams.conf", str,
           "upstream file, written atomically before every change reaches the interface"),
    Option("hosts_file", None, str, "resolve host names in servers from this file (hosts format) only, never "
                                    "through DNS (default: the system resolver)"),
    Option("resolve_timeout", 2.0, float, "seconds a sync waits, in all, for the host names in servers to resolve "
                                          "(each lookup runs off the sync loop; a late one counts as not resolving)"),
    Option("validate_command", None, str, "command run on a new upstream file before it replaces the old "
                                          "one; %s is the new file's path"),
    Option("directives", [], list, "upstream-level directives sent with every upstream (e.g. 'keepalive 32')"),
    Option("upstream_directives", {}, dict, "per-upstream directives, replacing 'directives' for that name"),
    Option("nginx_conf", None, str, "main configuration of the running nginx: its static upstreams (nginx -T, "
                                    "outside upstream_file) are reserved, learnt at start and at SIGHUP"),
    Option("nginx_binary", "nginx", str, "the nginx or Tengine binary that runs nginx_conf"),
    Option("validate_config", False, bool, "check every new upstream file with nginx -t of nginx_conf, the new "
                                           "file in place of upstream_file (needs a user that may run nginx -t)"),
    Option("reserved_names", [], list, "upstream names never written or sent, besides DYUPS_BALANCER and those "
                                       "learnt from nginx_conf (for hosts where nginx -T cannot run as this user)"),
    Option("allowed_networks", [], list, "CIDRs servers from Consul may point into (empty: any address outside "
                                         "the refused classes); a network inside loopback, link-local or this "
                                         "host's addresses lifts that refusal (127.0.0.0/8 for loopback backends)"),
    Option("denied_networks", [], list, "CIDRs servers from Consul never point into, besides loopback, "
                                        "unspecified, link-local, multicast and this host's addresses"),
    Option("allow_host_names", False, bool, "accept host names as addresses from Consul (nginx resolves them "
                                            "after any check; the watcher checks what they resolve to)"),
    Option("max_weight", 100, int, "the highest dyups_weight Meta an instance may set (1-10000); above: skipped"),
    Option("allow_zero_max_fails", False, bool, "accept Meta dyups_max_fails=0 (nginx never takes such a "
                                                "server out of rotation)"),
    Option("quiescence_min", 0.02, float, "seconds without a new Consul event before a change is applied; "
           "an event after that long a quiet spell is applied at once"),
    Option("quiescence_max", 0.25, float, "longest a burst of events may delay a change"),
    Option("drift_interval", 30.0, float, "seconds between comparisons of the interface with the desired state"),
    Option("zero_instances", "keep", str, "when a service has no passing instance: keep | down | delete"),
    Option("removal_guard_share", 0.5, float, "hold a change that removes more than this share of all servers"),
    Option("removal_guard_min", 3, int, "the hold applies only when at least this many servers would go"),
    Option("removal_hold_seconds", 600.0, float, "apply a held change once Consul confirmed it this long (0: "
                                                 "only when an operator releases it)"),
    Option("removal_guard_window", 60.0, float, "seconds over which removals add up for the guard: servers "
                                                "lost in this time count with the change's (0: the change alone)"),
    Option("check_peer_budget", 4096, int, "never send a change that brings the servers of upstreams with a "
                                           "'check' directive above this (0: no limit); see check_budget.py"),
    Option("dyups_shm_zone_size", None, str, "Tengine's dyups_shm_zone_size (e.g. 2m): never send a body that "
                                             "cannot fit it, which Tengine would apply on one worker only (unset: "
                                             "not checked; the Lua flavor refuses such a body whole); see zone_fit.py"),
    Option("retry_initial", 0.5, float, "first retry delay after a failure (doubles, with jitter)"),
    Option("retry_max", 5.0, float, "longest retry delay (also: the longest a recovered Consul or nginx waits)"),
    Option("fleet_share", False, bool, "off | on (false | true): with on, the watchers of one fleet_group elect "
                                       "a publisher (a Consul lock) that reads Consul and publishes each "
                                       "upstream's result through Consul KV; the others follow it, and read "
                                       "Consul themselves when it is gone or stale (docs/watcher.md, \"One "
                                       "reader for a fleet\")"),
    Option("fleet_kv_prefix", "swk", str, "KV prefix of the shared results (the ACL policy's key_prefix)"),
    Option("fleet_group", "default", str, "the group of watchers that share one publisher (proxies that route "
                                          "the same services with the same mapping settings): KV under "
                                          "fleet_kv_prefix/fleet_group/"),
    Option("fleet_session_ttl", 10.0, float, "seconds of the publisher's Consul session TTL (10-86400; Consul "
                                             "ends a session whose holder died within up to twice this)"),
    Option("fleet_lock_delay", 15.0, float, "Consul's lock delay (0-60 s): after the publisher's session ends, "
                                            "no one takes the lock for this long"),
    Option("fleet_heartbeat", 5.0, float, "seconds between the publisher's journal writes when nothing changed"),
    Option("fleet_stale_after", 15.0, float, "a follower that has seen no journal write for this long (at least "
                                             "twice fleet_heartbeat) reads Consul itself until a publisher "
                                             "publishes again"),
    Option("fleet_journal_entries", 8, int, "changes the journal keeps (a follower further behind reads every "
                                            "upstream key)"),
    Option("fleet_inline_max", 4096, int, "bytes of results carried in the journal itself (0: never; the "
                                          "followers then read each changed key)"),
    Option("fleet_value_max", 262144, int, "largest upstream value (bytes) published or accepted from KV "
                                           "(Consul's own limit: 512 kB)"),
    Option("status_listen", "127.0.0.1:18883", str, "loopback address:port of the status and metrics "
                                                    "endpoint ('' to disable)"),
    Option("metrics_listen", "", str, "ADDRESS:PORT of an extra listener for GET /metrics only, on any "
                                      "address, answering only metrics_allow ('' : none)"),
    Option("metrics_allow", [], list, "CIDRs whose clients metrics_listen answers (required with it)"),
    Option("log_level", "info", str, "debug | info | warning | error"),
)
_BY_NAME = {option.name: option for option in OPTIONS}


def default(name: str) -> Any:
    """The default of option ``name``: OPTIONS is the one place defaults are written."""
    return _BY_NAME[name].default


@dataclass(frozen=True)
class Settings:
    values: dict[str, Any] = field(default_factory=dict)
    config_file: str | None = None
    reserved: Reserved = field(default_factory=Reserved)  # learnt by build() (_reserved.py)
    policy: ServerPolicy | None = None  # built by build(), with this host's addresses (_server_policy.py)

    def __getattr__(self, name: str) -> Any:
        option = _BY_NAME.get(name)
        if option is None:
            raise AttributeError(name)
        value = self.values.get(name, option.default)
        return list(value) if isinstance(value, list) else value


def _coerce(option: Option, value: Any) -> Any:
    if value is None:
        return None
    kind = option.kind
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise SettingsError(f"{option.name}: expected true or false, got {value!r}")
    if kind is list:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return list(value)
        raise SettingsError(f"{option.name}: expected a list of strings, got {value!r}")
    if kind is dict:
        if isinstance(value, dict):
            return dict(value)
        raise SettingsError(f"{option.name}: expected a mapping, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{option.name}: expected {kind.__name__}, got {value!r}") from None


def load_file(path: str) -> dict[str, Any]:
    """The settings mapping stored in a YAML or JSON file."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise SettingsError(f"config file {path}: {exc.strerror}") from None
    if path.endswith((".yml", ".yaml")):
        try:
            import yaml
        except ImportError:
            raise SettingsError(f"config file {path}: YAML needs PyYAML (python3-yaml); or write it as JSON") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise SettingsError(f"config file {path}: not valid YAML: {exc}") from None
    else:
        try:
            data = json.loads(text or "{}")
        except ValueError as exc:
            raise SettingsError(f"config file {path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: expected a mapping of option names to values")
    unknown = sorted(set(data) - set(_BY_NAME))
    if unknown:
        raise SettingsError(f"config file {path}: unknown option(s) {', '.join(unknown)}")
    return data


# consul_environment()'s keys -> the watcher's option names.
ENVIRONMENT_OPTIONS = {"url": "consul_url", "token_file": "consul_token_file", "ca_path": "consul_ca_path",
                       "client_cert": "consul_client_cert", "client_key": "consul_client_key",
                       "validate_certs": "consul_validate_certs"}


def environment_values(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Consul options the consul CLI's environment variables give (see the module docstring)."""
    try:
        found = consul_environment(os.environ if environ is None else environ)
    except ValidationError as exc:
        raise SettingsError(f"environment: {exc}") from None
    if found.get("validate_certs") is False:
        found.pop("ca_path", None)  # as the consul CLI: CONSUL_HTTP_SSL_VERIFY=false skips verification
    return {ENVIRONMENT_OPTIONS[key]: value for key, value in found.items()}


def build(file_values: Mapping[str, Any] | None = None, flag_values: Mapping[str, Any] | None = None,
          config_file: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from defaults < environment < file < flags, checked; raises SettingsError naming the bad option.

    ``environ`` (default: the process's environment) supplies the Consul connection options the consul
    CLI reads from it; pass {} to ignore the environment."""
    values = {}
    for source in (environment_values(environ), file_values or {}, flag_values or {}):
        for name, value in source.items():
            if value is None:
                continue
            values[name] = _coerce(_BY_NAME[name], value)
    settings = Settings(values=values, config_file=config_file)
    policy = check(settings, *read_host_networks())
    try:
        reserved = reserved_from(settings.reserved_names, settings.nginx_conf, settings.nginx_binary,
                                 [settings.upstream_file])
    except ReservedNamesUnknown as exc:
        raise SettingsError(f"nginx_conf: {exc}") from None
    return replace(settings, reserved=reserved, policy=policy)


def server_policy(settings: Settings, own: Any = (), own_unread: str | None = None) -> ServerPolicy:
    """Where servers from Consul may point, and their Meta bounds (``own``: this host's addresses;
    ``own_unread``: why they could not be read, see read_host_networks)."""
    try:
        return ServerPolicy(settings.allowed_networks, settings.denied_networks, own=own,
                            allow_host_names=settings.allow_host_names, max_weight=settings.max_weight,
                            allow_zero_max_fails=settings.allow_zero_max_fails, own_unread=own_unread)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def check(settings: Settings, own: Any = (), own_unread: str | None = None) -> ServerPolicy:
    """Raises SettingsError naming the first setting that cannot be used; returns the server policy
    (``own``, ``own_unread``: this host's addresses, see server_policy), built once, here."""
    if settings.zero_instances not in ZERO_INSTANCE_POLICIES:
        raise SettingsError(f"zero_instances: expected one of {', '.join(ZERO_INSTANCE_POLICIES)}, "
                            f"got {settings.zero_instances!r}")
    if not 0 < settings.removal_guard_share <= 1:
        raise SettingsError("removal_guard_share: expected a share above 0 and at most 1")
    if not 0 <= settings.removal_guard_window <= MAX_REMOVAL_GUARD_WINDOW:
        raise SettingsError(f"removal_guard_window: expected seconds from 0 (the change alone) to "
                            f"{MAX_REMOVAL_GUARD_WINDOW:.0f}, got {settings.removal_guard_window!r}")
    if settings.quiescence_min < 0 or settings.quiescence_max < settings.quiescence_min:
        raise SettingsError("quiescence_min/quiescence_max: expected 0 <= min <= max")
    if not 0 <= settings.consul_max_stale <= 600 or settings.consul_max_stale != settings.consul_max_stale:
        raise SettingsError(f"consul_max_stale: expected seconds from 0 (no bound) to 600, "
                            f"got {settings.consul_max_stale!r}")
    if not 0 < settings.consul_wait <= 600:
        raise SettingsError("consul_wait: expected seconds above 0 and at most 600")
    if settings.check_peer_budget < 0:
        raise SettingsError("check_peer_budget: expected 0 (no limit) or more")
    if settings.dyups_shm_zone_size is not None:
        try:
            zone_bytes = zone_fit.parse_size(settings.dyups_shm_zone_size)
        except ValueError as exc:
            raise SettingsError(f"dyups_shm_zone_size: {exc}") from None
        if zone_fit.largest_body(zone_bytes) <= 0:
            raise SettingsError(f"dyups_shm_zone_size: {settings.dyups_shm_zone_size} holds no change at all")
    if not 0 < settings.resolve_timeout <= 60:
        raise SettingsError("resolve_timeout: expected seconds above 0 and at most 60")
    if not 0 < settings.nginx_poll_interval <= 10:
        raise SettingsError("nginx_poll_interval: expected seconds above 0 and at most 10")
    check_fleet(settings)
    policy = server_policy(settings, own, own_unread)
    if settings.validate_command and "%s" not in settings.validate_command:
        raise SettingsError("validate_command: must contain %s (the new file's path)")
    if settings.log_level not in ("debug", "info", "warning", "error"):
        raise SettingsError("log_level: expected debug, info, warning or error")
    if settings.validate_config and not settings.nginx_conf:
        raise SettingsError("validate_config: needs nginx_conf (the main configuration the new file is checked in)")
    if not settings.upstream_file:
        raise SettingsError("upstream_file: required; changes are written there before they reach dyups")
    try:
        parse_directives(settings.directives)
        for name, directives in settings.upstream_directives.items():
            validate_name(name)
            parse_directives(directives)
    except ValidationError as exc:
        raise SettingsError(f"directives: {exc}") from None
    try:
        check_api_url(settings.dyups_url)
    except ValidationError as exc:
        raise SettingsError(f"dyups_url: {exc}") from None
    if settings.status_listen.startswith("unix:"):
        path = settings.status_listen[len("unix:"):]
        if not path.startswith("/") or len(path.encode()) > 107 or path.endswith("/"):
            raise SettingsError(f"status_listen: expected unix:/ABSOLUTE/PATH (at most 107 bytes), got "
                                f"{settings.status_listen!r}")
    elif settings.status_listen:
        host, _sep, port = settings.status_listen.rpartition(":")
        try:
            loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            loopback = False
        if not loopback or not port.isdigit():
            raise SettingsError(f"status_listen: expected a loopback address:port, got {settings.status_listen!r}")

    check_metrics_listener(settings.metrics_listen, settings.metrics_allow)
    if settings.metrics_listen and settings.status_listen and not settings.status_listen.startswith("unix:"):
        host, port = split_listen(settings.metrics_listen)
        status_host, _sep, status_port = settings.status_listen.rpartition(":")
        if str(port) == status_port and (ipaddress.ip_address(host).is_unspecified or host == status_host.strip("[]")):
            raise SettingsError(f"metrics_listen: {settings.metrics_listen} takes the port of status_listen "
                                f"{settings.status_listen}; give it another port")
    return policy


_KV_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


def check_fleet(settings: Settings) -> None:
    """The fleet_* settings (fleet.py): checked whether fleet_share is on or not, so that turning it on
    later cannot fail on a value written long before."""
    segments = settings.fleet_kv_prefix.split("/")
    if not all(_KV_SEGMENT.match(segment) for segment in segments) or len(settings.fleet_kv_prefix) > 128:
        raise SettingsError(f"fleet_kv_prefix: expected KV path segments of A-Z a-z 0-9 _ . - separated by /, "
                            f"got {settings.fleet_kv_prefix!r}")
    if not _KV_SEGMENT.match(settings.fleet_group) or len(settings.fleet_group) > 128:
        raise SettingsError(f"fleet_group: expected a word of A-Z a-z 0-9 _ . -, got {settings.fleet_group!r}")
    if not 10 <= settings.fleet_session_ttl <= 86400:
        raise SettingsError("fleet_session_ttl: expected seconds from 10 to 86400 (Consul's bounds)")
    if not 0 <= settings.fleet_lock_delay <= 60:
        raise SettingsError("fleet_lock_delay: expected seconds from 0 to 60 (Consul's bounds)")
    if not 0.1 <= settings.fleet_heartbeat <= 300:
        raise SettingsError("fleet_heartbeat: expected seconds from 0.1 to 300")
    if not 2 * settings.fleet_heartbeat <= settings.fleet_stale_after <= 3600:
        raise SettingsError("fleet_stale_after: expected at least twice fleet_heartbeat, at most 3600 seconds")
    if not 1 <= settings.fleet_journal_entries <= 1000:
        raise SettingsError("fleet_journal_entries: expected 1 to 1000")
    if not 0 <= settings.fleet_inline_max <= 65536:
        raise SettingsError("fleet_inline_max: expected 0 to 65536 bytes")
    if not 1024 <= settings.fleet_value_max <= 524288:
        raise SettingsError("fleet_value_max: expected 1024 to 524288 bytes (Consul's limit)")


def check_metrics_listener(listen: str, allow: list[str]) -> None:
    """``metrics_listen`` an IP literal and a port; ``metrics_allow`` CIDRs, given with it and only with it."""
    if not listen:
        if allow:
            raise SettingsError("metrics_allow: set, but metrics_listen is not (it opens no listener alone)")
        return
    try:
        split_listen(listen)
    except ValueError:
        raise SettingsError(f"metrics_listen: expected an IP address and a port (0.0.0.0:9345, [::]:9345), "
                            f"got {listen!r}") from None
    if not allow:
        raise SettingsError("metrics_listen: needs metrics_allow, the CIDRs of the scrapers it answers "
                            "(e.g. [10.0.0.5/32])")
    for cidr in allow:
        try:
            ipaddress.ip_network(cidr)
        except ValueError as exc:
            raise SettingsError(f"metrics_allow: {cidr!r} is not a CIDR: {exc}") from None


def option_names() -> list[str]:
    return [option.name for option in OPTIONS]
