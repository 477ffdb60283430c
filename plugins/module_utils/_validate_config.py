# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: a candidate upstream file checked by nginx -t within the whole configuration.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``nginx -t`` (or ``tengine -t``) of the real main configuration with a candidate in place of the upstream file.

A file checked alone passes with a block named like an upstream that nginx.conf defines (``duplicate
upstream`` at the next reload) or like the Lua flavor's ``DYUPS_BALANCER``. So the candidate is checked
where it will be read, and the real path never holds an unchecked file:

1. the main configuration is copied into a private temporary directory, every relative ``include``
   made absolute (nginx resolves them against the main configuration's directory);
2. the ``include`` whose path (or glob) names the upstream file is pointed at the candidate; an
   included file that itself includes the upstream file (at any depth) is copied the same way, and a
   glob that matches it (or will, once it exists) is replaced by its matches, in nginx's (sorted) order;
3. ``NGINX -t -q -c COPY`` runs (``-p PREFIX`` when given); its exit status is the verdict.

Limits: other relative paths of the main configuration (an ``ssl_certificate certs/x.pem``) are resolved
against the copy's directory, so write them absolute (the role does). ``nginx -t`` opens the pid and log
files the configuration names: it must run as a user that may (root, for the role's configuration).
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import shutil
import subprocess
import tempfile

INCLUDE_RE = re.compile(r"""(?<![^\s;{}])include\s+("[^"]*"|'[^']*'|[^\s;"'{}]+)\s*;""")
MAX_DEPTH = 16
TIMEOUT = 60.0


class ConfigCheckFailed(Exception):
    """``nginx -t`` refused the configuration with the candidate in place (or could not run)."""


def _unquote(word: str) -> str:
    return word[1:-1] if len(word) >= 2 and word[0] == word[-1] and word[0] in "\"'" else word


def _matches(argument: str, base: str) -> tuple[str, list[str]]:
    """(absolute pattern, the files it names, sorted) of an include argument."""
    path = _unquote(argument)
    path = path if os.path.isabs(path) else os.path.join(base, path)
    if glob.has_magic(path):
        return path, sorted(glob.glob(path))
    return path, [path]


class _Rewriter:
    def __init__(self, base: str, upstream_file: str, candidate: str, workdir: str) -> None:
        self.base = base
        self.target = os.path.realpath(upstream_file)
        self.candidate = candidate
        self.workdir = workdir
        self.copies: dict[str, str | None] = {}   # real path -> its rewritten copy, None: holds no include of it
        self.found = False

    def rewrite(self, text: str, depth: int) -> str:
        def replace(match: re.Match) -> str:
            pattern, files = _matches(match.group(1), self.base)
            if glob.has_magic(pattern) and self.target not in files and fnmatch.fnmatchcase(self.target, pattern):
                files = sorted(files + [self.target])  # a glob that will match the file once it exists
            changed = [self.copy_of(path, depth) for path in files]
            if all(new is None for new in changed):
                return f'include "{pattern}";'
            paths = [new or path for path, new in zip(files, changed)]
            return " ".join(f'include "{path}";' for path in paths)
        return INCLUDE_RE.sub(replace, text)

    def copy_of(self, path: str, depth: int) -> str | None:
        """The path to include instead of ``path`` (the candidate, or a rewritten copy), or None."""
        real = os.path.realpath(path)
        if real == self.target:
            self.found = True
            return self.candidate
        if real in self.copies or depth >= MAX_DEPTH:
            return self.copies.get(real)
        self.copies[real] = None  # an include loop is nginx's to report
        try:
            with open(real, encoding="utf-8", errors="surrogateescape") as handle:
                text = handle.read()
        except OSError:
            return None
        if "include" not in text:
            return None
        found_before = self.found
        self.found = False
        rewritten = self.rewrite(text, depth + 1)
        needed, self.found = self.found, self.found or found_before
        if not needed:
            return None
        fd, copy = tempfile.mkstemp(prefix="included.", suffix=".conf", dir=self.workdir)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as handle:
            handle.write(rewritten)
        self.copies[real] = copy
        return copy


def candidate_config(main_conf: str, upstream_file: str, candidate: str, workdir: str) -> str:
    """Write into ``workdir`` the copy of ``main_conf`` that reads ``candidate`` instead of ``upstream_file``;
    its path. Raises ConfigCheckFailed when the configuration never includes ``upstream_file``."""
    main_conf = os.path.abspath(main_conf)
    rewriter = _Rewriter(os.path.dirname(main_conf), upstream_file, os.path.abspath(candidate), workdir)
    try:
        with open(main_conf, encoding="utf-8", errors="surrogateescape") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigCheckFailed(f"cannot read {main_conf}: {exc.strerror or exc}") from None
    rewritten = rewriter.rewrite(text, 0)
    if not rewriter.found:
        raise ConfigCheckFailed(f"{main_conf} does not include {upstream_file} (at any depth), so the candidate "
                                "cannot be checked where nginx reads it")
    copy = os.path.join(workdir, "nginx.conf")
    with open(copy, "w", encoding="utf-8", errors="surrogateescape") as handle:
        handle.write(rewritten)
    return copy


def check_config(nginx_binary: str, main_conf: str, upstream_file: str, candidate: str,
                 prefix: str | None = None, timeout: float = TIMEOUT) -> None:
    """``nginx_binary -t`` of ``main_conf`` with ``candidate`` in place of ``upstream_file``; raises
    ConfigCheckFailed with nginx's message. Nothing is written outside a temporary directory."""
    workdir = tempfile.mkdtemp(prefix="swallowkeeper-check-")
    try:
        copy = candidate_config(main_conf, upstream_file, candidate, workdir)
        argv = [nginx_binary, "-t", "-q", "-c", copy] + (["-p", prefix] if prefix else [])
        try:
            done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigCheckFailed(f"{' '.join(argv)}: {exc}") from None
        if done.returncode != 0:
            output = done.stdout.decode("utf-8", "replace").replace(copy, f"{main_conf} (with the candidate)")
            raise ConfigCheckFailed(f"{nginx_binary} -t of {main_conf} with the new upstream file in place failed "
                                    f"(exit status {done.returncode}): {output.strip()[-2000:]}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
