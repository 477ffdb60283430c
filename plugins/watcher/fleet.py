# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One reader of Consul for a group of proxies (``fleet_share: on``; issue 20, docs/architecture.md "At
fleet scale", docs/watcher.md "One reader for a fleet").

Every watcher of a ``fleet_group`` runs a FleetSource in place of the ConsulSource. It is in one of three
roles, and the daemon sees the same interface whichever it is (refresh_all, apply_events, take_changes):

- **publisher**: it holds the lock ``P/leader`` (a Consul session with ``fleet_session_ttl`` and
  ``fleet_lock_delay``), reads Consul as a single watcher does (its own ConsulSource), and after each
  change writes, in ``/v1/txn`` transactions that each check its session on the lock key, the upstream
  keys that changed and then the journal (a check-and-set on the journal's ModifyIndex): a deposed
  publisher cannot write either. With nothing to publish it writes the journal every
  ``fleet_heartbeat`` seconds (its heartbeat);
- **follower**: it holds one blocking query on the journal (``stale``, bounded by ``consul_max_stale``
  as the long polls are) and applies what changed: the results inline in the journal, else the keys
  named (read from the leader), else every key (``P/upstreams/?recurse``: at start, when too far
  behind, after a new publisher). It sends Consul no other query but a long one on the lock key;
- **fallback**: it reads Consul itself (a ConsulSource, as with ``fleet_share: off``) while the lock
  has no holder, the journal is older than ``fleet_stale_after`` (no write seen for that long), cannot
  be used, or its mapping digest differs from this watcher's (fleet_kv.digest_of: such a watcher never
  follows); it follows again when a publisher publishes again. A watcher that sees the lock free tries
  to take it.

A role changes only in the loop's thread (apply_events), and only once the new role's full read has
succeeded: a follower that cannot read KV, or a fallback that cannot read Consul, keeps serving what it
has (fail-static). Every value from KV passes fleet_kv.decode; a refused value is logged, counted
(``swallowkeeper_watcher_fleet_refused_values_total``) and listed with the skipped items, and that upstream
keeps its last good state.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import BlockingQuery
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ConsulBadAnswer, ConsulError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_mapping import MappingResult
from ansible_collections.swallowkeeper.dyups.plugins.watcher import fleet_kv
from ansible_collections.swallowkeeper.dyups.plugins.watcher.fleet_consul import FleetKV, b64, value_of
from ansible_collections.swallowkeeper.dyups.plugins.watcher.fleet_view import FollowerView
from ansible_collections.swallowkeeper.dyups.plugins.watcher.backoff import Backoff
from ansible_collections.swallowkeeper.dyups.plugins.watcher.consul_source import ConsulSource, consul_error_kind
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics
from ansible_collections.swallowkeeper.dyups.plugins.watcher.settings import Settings

log = logging.getLogger("swallowkeeper.watcher")
TXN_OPS = 64          # Consul's limit of operations per transaction
TXN_BYTES = 400_000   # below Consul's 512 kB request limit
KEYS_READ_ONE_BY_ONE = 32  # more changed keys than this and no inline results: one recurse read instead
ROLES = ("publisher", "follower", "fallback")


class FleetSource:
    """See the module docstring. Threads: ``fleet-lock`` (a long poll on the lock key; takes it when free,
    keeps the session alive while held), ``fleet-journal`` (a long poll on the journal), ``fleet-tick``
    (a local timer: the heartbeat and the staleness bound are checked in the loop's thread)."""

    def __init__(self, settings: Settings, metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.kv = FleetKV(settings, metrics)
        self.consul: Optional[ConsulSource] = ConsulSource(settings, metrics)  # fallback first (also for --once)
        self.options = self.consul.options
        self.digest = fleet_kv.digest_of(self.options)
        self.view: Optional[FollowerView] = None   # set while following
        self.role = "fallback"
        self.events: Optional[queue.Queue[Any]] = None
        self.stop_event = threading.Event()
        self._threads: List[threading.Thread] = []
        self._after_full_read: Optional[Callable[[], object]] = None
        self.kv_failure: Optional[str] = None   # the follower's KV failure (the ConsulSource keeps its own)
        # what the lock thread saw (it writes, the loop reads)
        self.lock_state = threading.Lock()
        self.session: Optional[str] = None
        self.holder: Optional[str] = None    # the lock key's Session (None: free)
        self.lock_seen = False
        self.want_lock = True                # False while a publisher with another digest publishes
        # the journal as this watcher last saw it
        self.journal: Optional[dict] = None
        self.journal_index = 0               # the journal's ModifyIndex the publisher's next CAS names
        self.seen_index = 0                  # the journal's ModifyIndex last seen by the long poll
        self.journal_seen_at = clock()       # when a new journal index was last seen
        self.journal_problem: Optional[str] = None
        self.applied_session: Optional[str] = None   # the follower: whose journal it applied, up to which seq
        self.applied_seq = -1
        # the publisher's bookkeeping
        self.published: Dict[str, bytes] = {}   # name -> the value its key holds (as written)
        self.publish_all = True
        self.seq = 0
        self.entries: List[dict] = []
        self.last_write = 0.0
        self.retry_at = 0.0   # a failed publish is retried from then on
        self.fallback_retry_at = 0.0   # a fallback whose full read of Consul failed is tried again then
        self._logged: Set[Tuple[str, str]] = set()
        self._set_role_metrics()

    # -- the daemon's interface ---------------------------------------------------------------------
    @property
    def after_full_read(self) -> Optional[Callable[[], object]]:
        return self._after_full_read

    @after_full_read.setter
    def after_full_read(self, value: Optional[Callable[[], object]]) -> None:
        self._after_full_read = value
        if self.consul is not None:
            self.consul.after_full_read = value

    @property
    def threads(self) -> List[threading.Thread]:
        return self._threads + (self.consul.threads if self.consul is not None else [])

    @property
    def failure(self) -> Optional[str]:
        """Why the current role's reads fail (None: they succeed); the daemon's removal hold counts only then."""
        if self.role != "follower" and self.consul is not None:
            return self.consul.failure
        return self.kv_failure

    def _direct(self) -> ConsulSource:
        """The ConsulSource of the publisher and fallback roles (every role but follower has one)."""
        if self.consul is None:
            raise RuntimeError(f"fleet: no Consul reader in the {self.role} role")
        return self.consul

    def adopt_session(self, old: "FleetSource") -> bool:
        """A SIGHUP reload: take over the session (and with it the lock) of the source this one replaces when
        both talk to the same lock with the same token and session settings, so that the old one's stop
        does not end it. Ended, the lock would be free: every follower would read Consul itself until a
        new publisher took it after the lock delay, the full reads the fleet share exists to save. True
        when it was taken over."""
        same = all(getattr(self.settings, name) == getattr(old.settings, name) for name in (
            "consul_url", "consul_datacenter", "fleet_kv_prefix", "fleet_group", "fleet_session_ttl",
            "fleet_lock_delay")) and self.kv.token == old.kv.token
        with old.lock_state:
            session = old.session if same else None
            if session is not None:
                old.session = None
        if session is None:
            return False
        with self.lock_state:
            self.session = session
        log.info("fleet: the session %s (and the lock it holds) kept across the reload", session)
        return True

    def refresh_all(self) -> None:
        """The full read of the current role: KV's every upstream (follower), Consul's (the others). The
        first one (before start_watching) follows at once when a publisher with this digest holds the lock."""
        if self.events is None and self.role == "fallback" and self.view is None:
            if self._publisher_usable_now():
                self._follow()
                return
        if self.role == "follower":
            self._read_all_keys()
            return
        self._direct().refresh_all()

    def note_failure(self, kind: str, exc: BaseException) -> None:
        if self.role == "follower" or self.consul is None:
            self.metrics.set(consul_up=0)
            if self.kv_failure != kind:
                log.error("fleet: Consul KV unavailable (%s), keeping the last good state and retrying: %s", kind, exc)
                self.kv_failure = kind
        else:
            self.consul.note_failure(kind, exc)

    def _kv_failed(self, kind: str, exc: BaseException) -> None:
        """A long poll of the lock or the journal failed: logged once per kind. It says nothing of the
        ConsulSource's reads (a fallback's state, its removal hold's clock)."""
        if self.role == "follower":
            self.metrics.set(consul_up=0)
        if self.kv_failure != kind:
            hint = (f" (with fleet_share on, the token needs key_prefix \"{self.settings.fleet_kv_prefix}/\" write "
                    "and session_prefix \"\" write besides the readers' policy: docs/consul.md)"
                    if kind == "consul_forbidden" else "")
            log.error("fleet: the lock or journal could not be read (%s), retrying: %s%s", kind, exc, hint)
            self.kv_failure = kind

    def mapping(self) -> MappingResult:
        if self.consul is not None and self.role != "follower":
            return self.consul.mapping()
        view = self.view or FollowerView()
        return MappingResult(upstreams=dict(view.upstreams), empty=tuple(sorted(view.empty)))

    def skipped(self) -> List[dict]:
        if self.role == "follower" and self.view is not None:
            return self.view.skipped()
        return self._direct().skipped()

    def take_changes(self) -> Tuple[Dict[str, Upstream], Set[str], Optional[Set[str]]]:
        if self.role == "follower" and self.view is not None:
            return self.view.take_changes()
        upstreams, empty, changed = self._direct().take_changes()
        if self.role == "publisher":
            self._publish(upstreams, empty, changed)
        return upstreams, empty, changed

    def start_watching(self, events: queue.Queue[Any]) -> None:
        self.events = events
        if self.consul is not None and not self.consul.threads:
            self.consul.start_watching(events)
        for target, name in ((self._lock_loop, "fleet-lock"), (self._journal_loop, "fleet-journal"),
                             (self._tick_loop, "fleet-tick")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, join_timeout: float = 2.0) -> None:
        self.stop_event.set()
        session = self.session
        if session is not None:   # the lock is released at once: a follower takes over without waiting the TTL
            try:
                self.kv.destroy(session)
            except ConsulError as exc:
                log.warning("fleet: the session could not be ended (it ends with its TTL): %s", exc)
        if self.consul is not None:
            self.consul.stop(join_timeout)
        self.kv.close()
        deadline = time.monotonic() + join_timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [thread for thread in self._threads if thread.is_alive()]

    def apply_events(self, batch: Iterable[Tuple[Any, ...]]) -> bool:
        consul_events = []
        journal = None
        for event in batch:
            if event[0] == "fleet_journal":
                journal = event
            elif event[0] == "fleet_error":
                self._kv_failed(event[1], event[2])
            elif event[0] not in ("fleet_tick", "fleet_lock"):
                consul_events.append(event)
        need = False
        if journal is not None:
            self._take_journal(journal[1], journal[2])
        if consul_events and self.consul is not None and self.role != "follower":
            need = self.consul.apply_events(consul_events)
        need = self._roles() or need
        if self.role == "follower" and journal is not None and self.view is not None:
            need = self._follow_journal() or need
        if self.role == "publisher" and self.publish_all and self.clock() >= self.retry_at:
            need = True   # a publish to retry (or the first after taking over): the sync publishes
        elif self.role == "publisher" and self.clock() - self.last_write >= self.settings.fleet_heartbeat:
            self._write(None, {})
        return need

    # -- roles ----------------------------------------------------------------------------------------
    def _set_role_metrics(self) -> None:
        self.metrics.set(**{f"fleet_{role}": int(self.role == role) for role in ROLES})
        self.metrics.set_status(fleet_role=self.role)

    def _become(self, role: str, why: str) -> None:
        if role == self.role:
            return
        if role == "fallback":
            self.metrics.count("fleet_fallbacks")
            log.warning("fleet: %s -> fallback (reading Consul itself): %s", self.role, why)
        else:
            log.warning("fleet: %s -> %s: %s", self.role, role, why)
        self.role = role
        self._set_role_metrics()

    def _lock(self) -> Tuple[Optional[str], Optional[str], bool]:
        with self.lock_state:
            return self.session, self.holder, self.lock_seen

    def _journal_fresh(self) -> bool:
        return self.clock() - self.journal_seen_at <= self.settings.fleet_stale_after

    def _usable_publisher(self, holder: Optional[str]) -> Optional[str]:
        """Why this watcher cannot follow now (None: it can)."""
        if holder is None:
            return "the lock has no holder"
        if self.journal is None:
            return self.journal_problem or "there is no journal"
        if self.journal["digest"] != self.digest:
            return (f"the publisher's mapping settings differ from this watcher's (digest {self.journal['digest']}, "
                    f"here {self.digest}): fix the settings or the fleet_group")
        if self.journal["session"] != holder:
            return "the lock's holder has not published yet"
        if not self._journal_fresh():
            return f"no journal write for more than fleet_stale_after {self.settings.fleet_stale_after:g}s"
        return None

    def _publisher_usable_now(self) -> bool:
        """At start: read the lock and the journal once; True when a publisher to follow is there."""
        try:
            lock = self.kv.get(self.kv.lock_key)
            entry = self.kv.get(self.kv.journal_key)
        except ConsulError as exc:
            log.info("fleet: the lock and journal could not be read at start (%s): reading Consul", exc)
            return False
        holder = lock.get("Session") if isinstance(lock, dict) else None
        with self.lock_state:
            self.holder = holder if isinstance(holder, str) else None
            own = self.session is not None and self.holder == self.session
        self._take_journal(entry, None)
        if own:   # kept across a reload (adopt_session): this watcher publishes, it follows no one
            return False
        why = self._usable_publisher(self.holder)
        if why is not None:
            log.info("fleet: not following at start: %s", why)
        return why is None

    def _roles(self) -> bool:
        """Move between roles on what the lock and the journal say; True when the view changed (a sync)."""
        session, holder, _seen = self._lock()
        mine = session is not None and holder == session
        if mine and self.role != "publisher":
            return self._take_over()
        if not mine and self.role == "publisher":
            self._become("fallback", "the lock is no longer this watcher's")
            return False
        why = self._usable_publisher(holder)
        self.want_lock = self.journal is None or self.journal["digest"] == self.digest or holder is None
        if self.role == "follower" and why is not None:
            return self._fall_back(why)
        if self.role == "fallback" and why is None:
            return self._follow()
        if why is not None and self.role == "fallback" and ("fallback", why) not in self._logged:
            self._logged = {("fallback", why)}
            log.info("fleet: reading Consul itself: %s", why)
        return False

    def _fall_back(self, why: str) -> bool:
        if self.clock() < self.fallback_retry_at:
            return False
        consul = ConsulSource(self.settings, self.metrics)
        consul.after_full_read = self._after_full_read
        try:
            consul.refresh_all()
        except Exception as exc:  # Consul unreadable: keep following what was applied (fail-static)
            consul.stop()
            self.note_failure(consul_error_kind(exc), exc)
            self.fallback_retry_at = self.clock() + self.settings.retry_max
            return False
        if self.events is not None:
            consul.start_watching(self.events)
        self.consul = consul
        self.view = None
        self._become("fallback", why)
        return True

    def _follow(self) -> bool:
        view = FollowerView()
        try:
            self._read_all_keys(view)
        except ConsulError as exc:
            self.note_failure(consul_error_kind(exc), exc)
            return False
        if self.consul is not None:
            self.consul.stop()
            self.consul = None
        self.view = view
        self._become("follower", "a publisher publishes with this watcher's mapping settings")
        return True

    def _take_over(self) -> bool:
        """This watcher holds the lock: read Consul (unless it does already), learn what KV holds, and
        publish everything that differs with a new journal entry."""
        if self.consul is None and not self._fall_back("taking over as the publisher"):
            return False
        try:
            entries = self.kv.get(self.kv.upstreams_prefix, recurse=True) or []
            journal = self.kv.get(self.kv.journal_key)
        except ConsulError as exc:
            self.note_failure(consul_error_kind(exc), exc)
            return False
        self.published = {entry["Key"][len(self.kv.upstreams_prefix):]: value_of(entry) for entry in entries
                          if isinstance(entry.get("Key"), str)}
        self.journal_index = journal.get("ModifyIndex", 0) if isinstance(journal, dict) else 0
        try:
            old = fleet_kv.check_journal(json.loads(value_of(journal)), self.settings.fleet_value_max) if journal else None
        except (ValueError, fleet_kv.Refused):
            old = None
        self.seq = old["seq"] if old else 0
        self.entries = []
        self.publish_all = True
        self._become("publisher", "this watcher holds the lock")
        return True

    # -- the follower ---------------------------------------------------------------------------------
    def _take_journal(self, entry: Optional[dict], index: Optional[int]) -> None:
        """Keep the journal a long poll (or the read at start) saw; a new index is a heartbeat."""
        if entry is None:
            self.journal, self.journal_problem = None, "there is no journal"
            return
        modify = entry.get("ModifyIndex") if isinstance(entry, dict) else None
        if modify == self.seen_index and self.journal is not None:
            return
        self.seen_index = modify if isinstance(modify, int) else 0
        self.journal_seen_at = self.clock()
        try:
            journal = json.loads(value_of(entry))
            self.journal = fleet_kv.check_journal(journal, self.settings.fleet_value_max)
            self.journal_problem = None
        except (ValueError, fleet_kv.Refused) as exc:
            self.metrics.count("fleet_refused_values")
            self.journal, self.journal_problem = None, f"the journal cannot be used: {exc}"
            log.warning("fleet: %s", self.journal_problem)
        self.metrics.set_index("fleet_journal", index or self.seen_index)

    def _follow_journal(self) -> bool:
        """Apply the journal's entries after the last one applied; True when a sync is needed."""
        journal, view = self.journal, self.view
        if journal is None or view is None:
            return False
        if journal["session"] != self.applied_session:
            return self._reread_all("a new publisher")
        if journal["seq"] <= self.applied_seq:
            return False
        entries = [entry for entry in journal["entries"] if entry["seq"] > self.applied_seq]
        seqs = [entry["seq"] for entry in entries]
        if not seqs or seqs[0] != self.applied_seq + 1 or any(entry.get("all") for entry in entries):
            return self._reread_all("the journal does not reach back to the last change applied")
        names: Dict[str, None] = {}
        for entry in entries:
            names.update(dict.fromkeys(entry["names"]))
        inline = journal.get("inline") or {}
        values = inline.get("values", {}) if inline.get("seq") == journal["seq"] else {}
        newest = set(entries[-1]["names"])
        unread = [name for name in names if not (name in newest and name in values)]
        if len(unread) > KEYS_READ_ONE_BY_ONE:
            return self._reread_all(f"{len(unread)} changed keys")
        read: Dict[str, Optional[bytes]] = {}
        for name in unread:
            entry = self.kv.get(self.kv.upstreams_prefix + name)
            read[name] = value_of(entry) if entry is not None else None
        version = view.version
        for name in names:
            self._apply(view, name, read[name] if name in read else values[name])
        self.applied_seq = journal["seq"]
        self.metrics.set(fleet_journal_seq=self.applied_seq)
        log.debug("fleet: journal seq %d applied (%d name(s), %d read)", self.applied_seq, len(names), len(read))
        return view.version != version

    def _apply(self, view: FollowerView, name: str, value: Any) -> None:
        if value is None:
            kind, upstream = None, None
        else:
            try:
                kind, upstream = fleet_kv.decode(name, value, self.options, self.settings.fleet_value_max)
            except fleet_kv.Refused as exc:
                self._refused(view, name, str(exc))
                return
        why = view.put(name, kind, upstream)
        if why is not None:
            self._refused(view, name, why)

    def _refused(self, view: FollowerView, name: str, why: str) -> None:
        self.metrics.count("fleet_refused_values")
        if view.refuse(name, why):
            log.warning("fleet: the value of upstream %r in KV is refused (the upstream keeps its last good state): %s",
                        name[:200], why)

    def _reread_all(self, why: str) -> bool:
        log.info("fleet: reading every upstream key: %s", why)
        self._read_all_keys()
        return True

    def _read_all_keys(self, view: Optional[FollowerView] = None) -> None:
        """Every ``P/upstreams/`` key into the view (names no longer there are gone; a refused value keeps
        the upstream's last good state); raises ConsulError and then changes nothing."""
        view = view if view is not None else self.view
        if view is None:
            raise RuntimeError("fleet: no follower view to read the keys into")
        journal = self.journal
        entries = self.kv.get(self.kv.upstreams_prefix, recurse=True) or []
        self.metrics.count("fleet_full_reads")
        found: Dict[str, bytes] = {}
        for entry in entries:
            key = entry.get("Key")
            if isinstance(key, str) and key.startswith(self.kv.upstreams_prefix):
                found[key[len(self.kv.upstreams_prefix):]] = value_of(entry)
        for name in [name for name in list(view.upstreams) + list(view.empty) if name not in found]:
            self._apply(view, name, None)
        for name in [name for name in view.refused if name not in found]:
            view.put(name, None, None)   # a refused value that is gone is no longer listed
        for name in sorted(found):
            self._apply(view, name, found[name])
        if view.changed is not None:
            view.changed = None   # every name compared again
        if journal is not None:
            self.applied_session, self.applied_seq = journal["session"], journal["seq"]
            self.metrics.set(fleet_journal_seq=self.applied_seq)
        if self.kv_failure is not None:
            log.warning("fleet: Consul KV answers again after %s", self.kv_failure)
            self.kv_failure = None
        self.metrics.set(consul_up=1)

    # -- the publisher --------------------------------------------------------------------------------
    def _publish(self, upstreams: Dict[str, Upstream], empty: Set[str], changed: Optional[Set[str]]) -> None:
        """Write what changed since the last publish (compared with what each key holds) and a journal
        entry naming it; a failure makes the next publish compare every name."""
        names: Iterable[str]
        if changed is None or self.publish_all:
            names = set(upstreams) | set(empty) | set(self.published)
        else:
            names = changed
        values: Dict[str, Optional[bytes]] = {}
        for name in names:
            encoded = fleet_kv.encode(upstreams.get(name), name in empty)
            raw = None if encoded is None else fleet_kv.dumps(encoded)
            if raw is not None and len(raw) > self.settings.fleet_value_max:
                log.error("fleet: upstream %s is %d bytes, above fleet_value_max: not published", name, len(raw))
                continue
            if raw != self.published.get(name):
                values[name] = raw
        if values or self.publish_all:
            self._write(values, upstreams)

    def _write(self, values: Optional[Dict[str, Optional[bytes]]], upstreams: Dict[str, Upstream]) -> None:
        """One journal write (values None: the heartbeat), the upstream keys first, every transaction
        checking the session on the lock key."""
        session = self.session
        if session is None:
            return
        started = self.clock()
        check = {"KV": {"Verb": "check-session", "Key": self.kv.lock_key, "Session": session}}
        seq = self.seq
        entries = list(self.entries)
        inline = None
        if values is not None:
            seq += 1
            names = sorted(values)
            entry: Dict[str, Any] = ({"seq": seq, "all": True} if self.publish_all or len(names) > 1000
                                     else {"seq": seq, "names": names})
            entries = (entries + [entry])[-self.settings.fleet_journal_entries:]
            size = sum(len(raw or b"null") + len(name) for name, raw in values.items())
            if "names" in entry and size <= self.settings.fleet_inline_max:
                inline = {"seq": seq, "values": {name: None if raw is None else json.loads(raw)
                                                 for name, raw in values.items()}}
        journal = {"format": fleet_kv.FORMAT, "session": session, "seq": seq, "heartbeat": round(time.time(), 3),
                   "digest": self.digest, "entries": entries}
        if inline is not None:
            journal["inline"] = inline
        ops: List[Dict[str, Any]] = []
        size = 0
        try:
            for name, raw in sorted((values or {}).items()):
                key = self.kv.upstreams_prefix + name
                ops.append({"KV": {"Verb": "set", "Key": key, "Value": b64(raw)} if raw is not None
                            else {"Verb": "delete", "Key": key}})
                size += len(raw or b"") * 4 // 3 + 100
                if len(ops) >= TXN_OPS - 2 or size >= TXN_BYTES:
                    if self.kv.txn([check] + ops) is None:
                        return self._write_refused()
                    ops, size = [], 0
            ops.append({"KV": {"Verb": "cas", "Key": self.kv.journal_key, "Value": b64(fleet_kv.dumps(journal)),
                               "Index": self.journal_index}})
            results = self.kv.txn([check] + ops)
        except ConsulError as exc:
            self.metrics.count("fleet_publish_failures")
            self.publish_all = True
            log.error("fleet: publishing failed, it is retried within a second: %s", exc)
            self.retry_at = self.clock() + 1.0
            return None
        if results is None:
            return self._write_refused()
        for result in results:
            kv = result.get("KV") if isinstance(result, dict) else None
            if isinstance(kv, dict) and kv.get("Key") == self.kv.journal_key:
                self.journal_index = kv.get("ModifyIndex", self.journal_index)
        if values is not None:
            for name, raw in values.items():
                if raw is None:
                    self.published.pop(name, None)
                else:
                    self.published[name] = raw
            self.metrics.count("fleet_publishes")
            self.metrics.set(fleet_journal_seq=seq, fleet_publish_seconds=round(self.clock() - started, 6))
            log.info("fleet: published journal seq %d (%d upstream(s)) in %.1f ms", seq, len(values),
                     (self.clock() - started) * 1000)
        self.seq, self.entries = seq, entries
        if values is not None:
            self.publish_all = False
        self.last_write = self.clock()
        return None

    def _write_refused(self) -> None:
        """A transaction was rolled back: the lock is not this watcher's any more, or the journal changed
        under it. The lock thread learns which; the next publish compares every name again."""
        self.metrics.count("fleet_publish_failures")
        self.publish_all = True
        try:
            journal = self.kv.get(self.kv.journal_key)
            self.journal_index = journal.get("ModifyIndex", 0) if isinstance(journal, dict) else 0
            # a journal written by another (a hostile writer, a publisher deposed meanwhile) may have taken
            # sequence numbers: the next entry comes after them, so followers cannot take it for one applied
            found = json.loads(value_of(journal)) if isinstance(journal, dict) else None
            if isinstance(found, dict) and isinstance(found.get("seq"), int) and found["seq"] > self.seq:
                self.seq = found["seq"]
        except (ConsulError, ValueError):
            pass
        log.warning("fleet: a publish was refused by Consul (the session no longer holds the lock, or the "
                    "journal was written by another); it is retried if this watcher still holds the lock")
        self.retry_at = self.clock() + 1.0

    # -- threads --------------------------------------------------------------------------------------
    def _post(self, *event: Any) -> None:
        if self.events is not None and not self.stop_event.is_set():
            self.events.put(event)

    def _lock_loop(self) -> None:
        settings = self.settings
        query = BlockingQuery(self.kv.client, f"/v1/kv/{self.kv.lock_key}", wait=settings.consul_wait,
                              sleep=self.stop_event.wait, stale=False)
        backoff = Backoff(settings.retry_initial, settings.retry_max)
        renewed_at = self.clock()
        while not self.stop_event.is_set():
            try:
                holder, held = self._lock_step(query)
                if held:
                    if self.clock() - renewed_at >= settings.fleet_session_ttl / 3:
                        loop_age = time.time() - self.metrics.loop_heartbeat
                        # a loop that stopped must not keep the lock: the followers would follow nothing
                        if loop_age < settings.fleet_session_ttl and not self.kv.renew(self.session or ""):
                            with self.lock_state:
                                self.session = None
                        renewed_at = self.clock()
                    query.wait = settings.fleet_session_ttl / 3
                else:
                    query.wait = settings.consul_wait
                    if holder is None and self.want_lock:
                        renewed_at = self.clock()
                        if self._try_acquire():
                            continue
                        # refused (the lock delay of a session that ended): tried again soon, the next
                        # read a plain one (a blocking one would wait for a change that may not come)
                        query.index = 0
                        self.stop_event.wait(min(1.0, max(0.1, settings.fleet_lock_delay / 4)))
                    elif holder is not None and self.session is not None:
                        self._drop_session()
                backoff.reset()
            except Exception as exc:  # a ConsulError or a bug: this thread goes on
                if self.stop_event.is_set():
                    break
                kind = consul_error_kind(exc)
                if not isinstance(exc, ConsulError):
                    log.error("fleet: the lock thread failed unexpectedly, retrying: %s: %s", type(exc).__name__, exc)
                self._post("fleet_error", kind, exc)
                self.stop_event.wait(backoff.next())

    def _lock_step(self, query: BlockingQuery) -> Tuple[Optional[str], bool]:
        """One read of the lock key; (its holder, whether it is this watcher's session)."""
        try:
            result = query.poll()
            entry = result.data[0] if isinstance(result.data, list) and result.data else {}
        except ConsulBadAnswer as exc:
            if exc.status != 404:
                raise
            entry = {}
            query.index = 0
            self.stop_event.wait(min(1.0, self.settings.fleet_heartbeat))
        holder = entry.get("Session") if isinstance(entry, dict) and isinstance(entry.get("Session"), str) else None
        with self.lock_state:
            changed = holder != self.holder or not self.lock_seen
            self.holder, self.lock_seen = holder, True
            held = self.session is not None and holder == self.session
        if changed:
            self._post("fleet_lock", holder)
        return holder, held

    def _try_acquire(self) -> bool:
        """Try to take the free lock with this watcher's session (made now when it has none). A session kept
        from a refused try is renewed first: nothing else renews it while it holds nothing, and Consul
        ends it within twice its TTL, which a lock delay longer than that outlasts (on the molecule fleet,
        TTL 10 s and a lock delay of 15 s under load: every watcher went on trying with a session Consul
        had ended, and the lock stayed free); one Consul no longer knows is replaced."""
        with self.lock_state:
            session = self.session
        if session is not None and not self.kv.renew(session):
            with self.lock_state:
                self.session = session = None
        if session is None:
            session = self.kv.create_session()
            with self.lock_state:
                self.session = session
        if self.kv.acquire(session):
            with self.lock_state:
                self.holder = session
            self._post("fleet_lock", session)
            return True
        return False

    def _drop_session(self) -> None:
        """Another watcher holds the lock: this one's session (made to compete) is ended."""
        with self.lock_state:
            session, self.session = self.session, None
        if session is not None:
            try:
                self.kv.destroy(session)
            except ConsulError:
                pass

    def _journal_loop(self) -> None:
        settings = self.settings
        query = BlockingQuery(self.kv.watch_client, f"/v1/kv/{self.kv.journal_key}", wait=settings.consul_wait,
                              sleep=self.stop_event.wait)
        backoff = Backoff(settings.retry_initial, settings.retry_max)
        while not self.stop_event.is_set():
            try:
                result = query.poll()
            except ConsulBadAnswer as exc:
                if exc.status == 404:   # no journal yet: looked at again within a heartbeat
                    query.index = 0
                    self._post("fleet_journal", None, None)
                    self.stop_event.wait(min(1.0, settings.fleet_heartbeat))
                    continue
                self._post("fleet_error", consul_error_kind(exc), exc)
                self.stop_event.wait(backoff.next())
                continue
            except Exception as exc:  # a ConsulError or a bug: this thread goes on
                if self.stop_event.is_set():
                    break
                self._post("fleet_error", consul_error_kind(exc), exc)
                self.stop_event.wait(backoff.next())
                continue
            backoff.reset()
            self.metrics.set_index("fleet_journal", result.index, result.last_contact if result.reread_after is None
                                   else result.reread_after)
            if result.changed and isinstance(result.data, list) and result.data:
                self._post("fleet_journal", result.data[0], result.index)

    def _tick_loop(self) -> None:
        every = min(self.settings.fleet_heartbeat, self.settings.fleet_stale_after / 4) / 2
        while not self.stop_event.wait(every):
            self._post("fleet_tick")
