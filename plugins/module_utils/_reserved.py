# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: reserved upstream names, the one place they are learnt and checked.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Upstream names that neither a module run nor the watcher may create, replace or delete.

* ``DYUPS_BALANCER``: the Lua flavor's own upstream (``roles/tengine_dyups/files/nginx/dyups_lua.conf``),
  through which every dynamic upstream is balanced. Always reserved, on both flavors.
* Every upstream defined statically in the running configuration outside the managed upstream file:
  on Tengine a POST of such a name replaces it at run time and the file then holds a second block
  (``duplicate upstream``: every later reload fails). They are learnt from ``nginx -T`` of the
  configured binary and main configuration: the dump's ``upstream NAME {`` blocks, except those of
  the sections of the managed file. Blocks of ``stream {}`` are reserved too (the dump does not say
  which context included a file).
* ``reserved_names``: names an operator adds, for hosts where ``nginx -T`` cannot run as the
  watcher's (or the module's) user (it must read every included file, certificates too).

Names compare by ``name_key`` (letter case ignored), as the data plane compares them. The modules
learn at every run, the watcher at its start and at every SIGHUP.
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any, Iterable, Mapping

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import name_key

BALANCER_UPSTREAM = "DYUPS_BALANCER"
NGINX_T_TIMEOUT = 60.0
_SECTION_RE = re.compile(r"^# configuration file (.+):$", re.MULTILINE)
_WORD_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{};]|[^\s{};#"\']+|#[^\n]*')


def reserved_argument_spec() -> dict[str, dict[str, Any]]:
    """The modules' options (the doc fragment ``_reserved`` documents them; the watcher's settings have the
    same names)."""
    return {
        "reserved_names": {"type": "list", "elements": "str", "default": []},
        "nginx_conf": {"type": "path"},
        "nginx_binary": {"type": "path", "default": "nginx"},
    }


class ReservedNamesUnknown(Exception):
    """``nginx -T`` could not tell the static upstreams; the message says why and what to do."""


def _unquote(word: str) -> str:
    return word[1:-1] if len(word) >= 2 and word[0] == word[-1] and word[0] in "\"'" else word


def static_upstreams(dump: str, managed: Iterable[str] = ()) -> list[str]:
    """The names of the ``upstream NAME {`` blocks of an ``nginx -T`` dump, outside the sections of the
    ``managed`` files (compared by real path)."""
    skip = {os.path.realpath(path) for path in managed if path}
    marks = list(_SECTION_RE.finditer(dump))
    names = []
    for number, mark in enumerate(marks):
        if os.path.realpath(mark.group(1)) in skip:
            continue
        end = marks[number + 1].start() if number + 1 < len(marks) else len(dump)
        words = [word for word in _WORD_RE.findall(dump, mark.end(), end) if not word.startswith("#")]
        for at, word in enumerate(words):
            if word == "upstream" and (at == 0 or words[at - 1] in ";{}") and at + 2 < len(words) \
                    and words[at + 2] == "{":
                names.append(_unquote(words[at + 1]))
    return names


def learn_static(nginx_binary: str, nginx_conf: str, managed: Iterable[str] = (),
                 timeout: float = NGINX_T_TIMEOUT) -> list[str]:
    """Run ``nginx_binary -T -q -c nginx_conf`` and return its static upstreams (see static_upstreams)."""
    argv = [nginx_binary, "-T", "-q", "-c", nginx_conf]
    advice = ("; run it as a user that can read the whole configuration, or list the static upstream names in "
              "reserved_names and leave nginx_conf unset")
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReservedNamesUnknown(f"cannot learn the static upstreams: {' '.join(argv)}: {exc}{advice}") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip()[-2000:]
        raise ReservedNamesUnknown(f"cannot learn the static upstreams: {' '.join(argv)} failed with exit status "
                                   f"{done.returncode}: {message}{advice}")
    return static_upstreams(done.stdout.decode("utf-8", "replace"), managed)


class Reserved:
    """The reserved names by key, each with why it is reserved."""

    def __init__(self, static: Iterable[str] = (), extra: Iterable[str] = (), nginx_conf: str | None = None) -> None:
        self.why: dict[str, str] = {}
        where = f"nginx -T of {nginx_conf}" if nginx_conf else "the running configuration"
        for name in static:
            self.why.setdefault(name_key(name), f"upstream {name} is defined in {where}, outside the upstream file")
        for name in extra:
            self.why.setdefault(name_key(name), f"{name} is listed in reserved_names")
        self.why[name_key(BALANCER_UPSTREAM)] = (f"{BALANCER_UPSTREAM} is the Lua flavor's own balancer upstream "
                                                 "(dyups_lua.conf)")

    def problem(self, name: str) -> str | None:
        """Why ``name`` is reserved, or None."""
        return self.why.get(name_key(name))

    def check(self, name: str) -> str:
        """``name``, or raise ValidationError saying why it is reserved (rule id ``name.reserved``)."""
        why = self.problem(name)
        if why:
            raise ValidationError("upstream name", name, f"is reserved: {why}; no module run or watcher may "
                                                         "create, replace or delete it", "name.reserved")
        return name

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name_key(name) in self.why


def reserved_from(reserved_names: Iterable[str] = (), nginx_conf: str | None = None, nginx_binary: str = "nginx",
                  managed: Iterable[str] = ()) -> Reserved:
    """The Reserved names: ``reserved_names``, the balancer's, and (when ``nginx_conf`` is given) the static
    upstreams ``nginx -T`` shows outside the ``managed`` files; raises ReservedNamesUnknown."""
    static = learn_static(nginx_binary or "nginx", nginx_conf, managed) if nginx_conf else []
    return Reserved(static, reserved_names or (), nginx_conf)


def reserved_from_params(params: Mapping[str, Any], managed: Iterable[str] = ()) -> Reserved:
    """reserved_from() with a module's parameters (ARGUMENT_SPEC)."""
    return reserved_from(params.get("reserved_names") or (), params.get("nginx_conf"),
                         params.get("nginx_binary") or "nginx", managed)
