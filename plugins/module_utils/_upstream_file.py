# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: the upstream file, the one place it is rendered, parsed and replaced.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The upstream file: ``upstream NAME { server ...; }`` blocks that nginx includes.

dyups keeps what it is told in memory only: a reload or restart rebuilds the
upstreams from the configuration. So every change is written here first, then
sent to the interface. Three guarantees:

* ``render`` only ever writes upstreams that passed ``build_upstream``;
* ``parse`` reads what ``render`` writes (and hand-written files of the same
  shape) and rejects anything else with the line number;
* ``replace_file`` never leaves a half-written file: a temporary file in the
  same directory, fsync, an optional validation command, then ``rename``
  over the old one, keeping its mode and owner.

One writer at a time: every writer (the dyups_upstream module, so sync.yml, and the watcher) holds
``WriterLock`` on ``.NAME.lock`` beside the file from the moment it reads the file until it has
written it and sent its requests. A running watcher also holds ``WatcherClaim`` on ``.NAME.watcher``
for its whole life: it writes the file from Consul, so a module run refuses a file it claims
(``watcher_owner`` names the watcher). ``.NAME.unsent`` records the upstreams a module run wrote
to the file and has not (yet) sent to the interface, so that the next run sends them.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import json
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
import weakref
from typing import Any, Callable, Iterable, Iterator, Mapping

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import name_key
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream, build_upstream

HEADER = (
    "# Upstreams managed by swallowkeeper.dyups. Written atomically by the dyups_upstream module\n"
    "# or the watcher; edits by hand are kept only if they follow this format.\n"
)
DEFAULT_MODE = 0o644


def _unique_ignoring_case(names: Iterable[str], where: str = "upstream file") -> None:
    """nginx compares upstream names ignoring case: ``Web`` and ``web`` in one file break the next reload."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name_key(name), name)
        if other != name:
            raise ValidationError(where, name, f"names {other!r} and {name!r} differ only in letter case; nginx "
                                               "treats them as one upstream and refuses the file", "file.case_clash")


def render_block(upstream: Upstream) -> str:
    """``upstream NAME { ... }`` for one Upstream."""
    lines = [f"upstream {upstream.name} {{"]
    lines.extend(f"    {statement}" for statement in upstream.statements())
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(upstreams: Iterable[Upstream], header: str = HEADER, block: Callable[[Upstream], str] = render_block) -> str:
    """The file's text for an iterable of Upstream (sorted by name: stable, diffable).

    ``block`` renders one upstream; a caller that renders often may pass a memoizing one.
    """
    upstreams = sorted(upstreams, key=lambda item: item.name)
    _unique_ignoring_case(upstream.name for upstream in upstreams)
    parts = [header] if header else []
    parts.extend(block(upstream) for upstream in upstreams)
    return "\n".join(parts)


class RenderedFile:
    """The file's text kept as one rendered block per upstream, in name order, for a writer that
    changes a few upstreams at a time (the watcher): ``update`` renders the changed ones only, and
    ``text`` joins the blocks (the same text ``render`` gives for the same upstreams)."""

    def __init__(self, upstreams: Iterable[Upstream] = (), header: str = HEADER) -> None:
        self.header = header
        self.names: list[str] = []
        self.texts: list[str] = []
        self.lower: dict[str, str] = {}
        self.update({upstream.name: upstream for upstream in upstreams})

    def update(self, changes: Mapping[str, Upstream | None]) -> None:
        """Apply ``{name: Upstream, or None to remove it}``; raises ValidationError (and changes
        nothing) when a new name differs from a kept one only in letter case."""
        for name, upstream in changes.items():
            other = self.lower.get(name_key(name))
            if upstream is not None and other is not None and other != name and changes.get(other, 0) is not None:
                _unique_ignoring_case([other, name])
        for name, upstream in sorted(changes.items(), key=lambda item: item[1] is not None):  # removals first
            at = bisect.bisect_left(self.names, name)
            present = at < len(self.names) and self.names[at] == name
            if upstream is None:
                if present:
                    del self.names[at], self.texts[at]
                    del self.lower[name_key(name)]
            elif present:
                self.texts[at] = render_block(upstream)
            else:
                self.names.insert(at, name)
                self.texts.insert(at, render_block(upstream))
                self.lower[name_key(name)] = name

    def text(self) -> str:
        return "\n".join(([self.header] if self.header else []) + self.texts)


def _tokens(text: str) -> Iterator[tuple[int, str]]:
    """Yield (line, token) where a token is a word, '{', '}' or ';'. Comments are dropped."""
    i, n, line = 0, len(text), 1
    while i < n:
        char = text[i]
        if char == "\n":
            line += 1
            i += 1
        elif char in " \t\r":
            i += 1
        elif char == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif char in "{};":
            yield line, char
            i += 1
        elif char == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise ValidationError("upstream file", f"line {line}", "a double quote is not closed", "block.quote_unclosed")
            yield line, text[i:j + 1]
            line += text.count("\n", i, j)
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in " \t\r\n{};#\"":
                j += 1
            yield line, text[i:j]
            i = j


def parse(text: str) -> dict[str, Upstream]:
    """Return {name: Upstream} from the file's text; raises ValidationError naming the line."""
    upstreams: dict[str, Upstream] = {}
    keys: set[str] = set()
    tokens = list(_tokens(text))
    i = 0
    while i < len(tokens):
        line, word = tokens[i]
        if word != "upstream" or i + 2 >= len(tokens) or tokens[i + 2][1] != "{":
            raise ValidationError("upstream file", f"line {line}", f"expected 'upstream NAME {{', found {word!r}",
                                  "file.expected_upstream")
        name = tokens[i + 1][1]
        i += 3
        servers: list[str] = []
        directives: list[str] = []
        words: list[str] = []
        while True:
            if i >= len(tokens):
                raise ValidationError("upstream file", f"line {line}", f"upstream {name} is not closed with '}}'",
                                      "file.unclosed")
            at, word = tokens[i]
            i += 1
            if word == "}":
                if words:
                    raise ValidationError("upstream file", f"line {at}", f"missing ';' after {' '.join(words)!r}",
                                          "block.missing_semicolon")
                break
            if word == "{":
                raise ValidationError("upstream file", f"line {at}", "blocks inside an upstream are not supported",
                                      "block.nested")
            if word == ";":
                if not words:
                    raise ValidationError("upstream file", f"line {at}", "an empty statement", "block.empty_statement")
                if words[0] == "server":
                    servers.append(" ".join(words[1:]))
                else:
                    directives.append(" ".join(words))
                words = []
            else:
                words.append(word)
        if name_key(name) in keys:
            raise ValidationError("upstream file", f"line {line}", f"upstream {name} is defined twice (nginx "
                                                                   "compares names ignoring case)",
                                  "file.defined_twice")
        try:
            upstreams[name] = build_upstream(name, servers, directives)
        except ValidationError as exc:
            raise ValidationError("upstream file", f"line {line}", str(exc), exc.rule_id) from None
        keys.add(name_key(name))
    return upstreams


def _open_regular(path: str) -> int:
    """A descriptor of the regular file at ``path``, never through a symbolic link (its last component) and
    never a FIFO or a device (opened without blocking, then refused); ValidationError naming the path."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValidationError("upstream file", path, "is a symbolic link; the upstream file is read only as "
                                  "a regular file, never through a link", "file.symlink") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValidationError("upstream file", path, "is not a regular file", "file.not_regular")
    return fd


def read_text(path: str) -> tuple[str | None, dict[str, Upstream]]:
    """(text, {name: Upstream}) of the file at ``path``; an absent file is (None, {}). A symbolic link, a FIFO
    or a device there is refused (ValidationError), not read."""
    try:
        fd = _open_regular(path)
    except FileNotFoundError:
        return None, {}
    with os.fdopen(fd, encoding="utf-8") as handle:
        text = handle.read()
    return text, parse(text)


def read(path: str) -> dict[str, Upstream]:
    """{name: Upstream} from the file at ``path``; an absent file holds nothing."""
    return read_text(path)[1]


def backup_path_for(path: str) -> str:
    return f"{path}.{os.getpid()}.{time.strftime('%Y-%m-%d@%H:%M:%S')}~"


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ValidateCommandFailed(Exception):
    def __init__(self, command: str, returncode: int, output: str) -> None:
        self.command = command
        self.returncode = returncode
        self.output = output
        super().__init__(f"validation command {command!r} failed with exit status {returncode}: {output.strip()}")


def run_validate(command: str, candidate: str) -> None:
    """Run ``command`` (``%s`` replaced by the candidate file's path); raise ValidateCommandFailed."""
    if "%s" not in command:
        raise ValidationError("validate command", command, "must contain %s, replaced by the new file's path")
    argv = [word.replace("%s", candidate) for word in shlex.split(command)]
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise ValidateCommandFailed(command, result.returncode, result.stdout.decode("utf-8", "replace"))


def replace_file(path: str, content: str | bytes, mode: int | None = None, backup: bool = False,
                 validate: str | None = None, check: Callable[[str], None] | None = None,
                 sync_directory: bool = True) -> str | None:
    """Atomically replace ``path`` with ``content``; return the backup's path (or None).

    The old file stays whole until ``rename``; a crash at any point before it
    leaves the old file as it was and at most a ``.NAME.*.tmp`` beside it.
    Mode and owner of an existing file are kept; a new file gets ``mode``
    (default 0644). ``check(temporary path)``, like ``validate``, runs before the rename and raises to stop it
    (``_validate_config.check_config``: nginx -t of the whole configuration with the new file in place).

    The data is fsynced before the rename, so that no crash, a power loss included, leaves a short or
    empty file under the name. ``sync_directory`` (default) also fsyncs the directory after the rename,
    so that the new file, not the old one, is what a power loss leaves. A killed process needs neither
    (the rename is seen by every reader at once); the watcher passes False: after a power loss nginx
    starts from the old, whole file and the watcher's first full read writes and posts what Consul
    holds, and the directory's fsync was about half of a flip's write (docs/benchmarks.md, issue 22).
    """
    path = os.path.abspath(path)
    directory, base = os.path.split(path)
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        current = os.stat(path)
    except FileNotFoundError:
        current = None
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if current is not None:
            os.chmod(tmp, stat.S_IMODE(current.st_mode))
            if hasattr(os, "chown") and (current.st_uid, current.st_gid) != (os.getuid(), os.getgid()):
                try:
                    os.chown(tmp, current.st_uid, current.st_gid)
                except PermissionError:
                    pass
        else:
            os.chmod(tmp, DEFAULT_MODE if mode is None else mode)
        if validate:
            run_validate(validate, tmp)
        if check is not None:
            check(tmp)
        backup_file = None
        if backup and current is not None:
            backup_file = backup_path_for(path)
            shutil.copy2(path, backup_file)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if sync_directory:
        _fsync_directory(directory)
    return backup_file


def remove_stale_temp_files(path: str, older_than: float = 60.0) -> list[str]:
    """Remove ``.NAME.*.tmp`` files that a writer killed mid-write left beside ``path``; their names."""
    path = os.path.abspath(path)
    directory, base = os.path.split(path)
    removed: list[str] = []
    now = time.time()
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if name.startswith(f".{base}.") and name.endswith(".tmp"):
            candidate = os.path.join(directory, name)
            try:
                if now - os.stat(candidate).st_mtime >= older_than:
                    os.unlink(candidate)
                    removed.append(candidate)
            except OSError:
                continue
    return removed


# -- one writer at a time ----------------------------------------------------------------------------------
def side_path(path: str, what: str) -> str:
    """``DIR/.NAME.WHAT`` beside the upstream file ``DIR/NAME``: its lock, its watcher claim, its unsent record."""
    directory, base = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{base}.{what}")


def file_identity(path: str) -> tuple[int, int, int, int] | None:
    """What tells one version of the file from another (device, inode, size, mtime), or None when absent."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)


class LockTimeout(OSError):
    """Another writer held the upstream file's lock for longer than the timeout."""


class UpstreamFileBusy(Exception):
    """A running watcher owns the upstream file (or, for a watcher, another watcher does)."""


class WriterLock:
    """``flock`` on ``.NAME.lock`` beside the upstream file: one writer at a time, across processes.

    Held by a module run from reading the file to its last request, and by the watcher across each
    write + push cycle. Re-entrant within one object (the watcher's retry calls its sync). The lock
    file is opened read-only (``flock`` needs no more), so writers running as different users share
    it; it is created 0644 and never removed (removing it would let two writers lock two files).
    """

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.path = side_path(path, "lock")
        self.timeout = timeout
        self._fd: int | None = None
        self._depth = 0

    def __enter__(self) -> "WriterLock":
        if self._depth == 0:
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        os.close(fd)
                        raise LockTimeout(errno.EWOULDBLOCK, f"another writer held {self.path} for more than "
                                                             f"{self.timeout:g} s") from None
                    time.sleep(0.02)
            self._fd = fd
        self._depth += 1
        return self

    def __exit__(self, *_exc: Any) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor releases the lock


def watcher_owner(path: str) -> str | None:
    """Who claims the upstream file (``swallowkeeper-dyups watcher, pid N``) while a watcher runs, else None."""
    try:
        fd = os.open(side_path(path, "watcher"), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 200).decode("utf-8", "replace").strip()
            return text or "a swallowkeeper-dyups watcher"
        return None  # a watcher that stopped left the file; nobody holds it
    finally:
        os.close(fd)


_CLAIMS: "weakref.WeakValueDictionary[str, WatcherClaim]" = weakref.WeakValueDictionary()


class WatcherClaim:
    """A running watcher's claim on its upstream file: an exclusive ``flock`` on ``.NAME.watcher``,
    which holds ``swallowkeeper-dyups watcher, pid N``; released when the object is collected or
    the process ends. ``claim`` returns the claim this process already holds for the file (the
    watcher rebuilds its Syncer on reload) and raises UpstreamFileBusy when another process holds it."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        weakref.finalize(self, os.close, fd)

    @classmethod
    def claim(cls, path: str) -> "WatcherClaim":
        path = side_path(path, "watcher")
        held = _CLAIMS.get(path)
        if held is not None:
            return held
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise UpstreamFileBusy(f"{owner} already owns the upstream file ({path} is locked)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"swallowkeeper-dyups watcher, pid {os.getpid()}\n".encode("ascii"))
        claim = cls(path, fd)
        _CLAIMS[path] = claim
        return claim


def read_unsent(path: str) -> set[str]:
    """Names a module run wrote to the upstream file and did not send to the interface (``.NAME.unsent``)."""
    record = side_path(path, "unsent")
    try:
        with open(record, encoding="utf-8") as handle:
            names = json.load(handle).get("unsent")
    except FileNotFoundError:
        return set()
    except (ValueError, AttributeError):
        names = None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValidationError("unsent record", record, "is not {\"unsent\": [names]}; remove it and run with force=true")
    return set(names)


def write_unsent(path: str, names: Iterable[str]) -> None:
    """Record ``names`` as written to the file and not sent (atomically); an empty set removes the record."""
    record = side_path(path, "unsent")
    names = sorted(set(names))
    if names:
        replace_file(record, json.dumps({"unsent": names}) + "\n")
        return
    try:
        os.unlink(record)
    except FileNotFoundError:
        pass
