# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: the upstream name rule, the one place it is defined.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The upstream name rule.

A name must be safe in two places at once: in the interface's URL
(``/upstream/NAME``) and as ``upstream NAME {`` in a configuration file that
nginx parses on its next reload. Tengine itself stores ``bad name`` or ``x{y``
and then fails that reload, so the rule lives here, before anything is sent
or written.

The rule: 1 to ``MAX_NAME_LENGTH`` characters from ``A-Z a-z 0-9 _ . -``,
the first one a letter, a digit or ``_``. The Lua flavor implements the same
rule; ``tests/vectors/names.json`` holds the cases both test suites run.

Names are compared as the data plane compares them: Tengine (``ngx_strncasecmp``), dyups and the Lua
flavor (``string.lower``) ignore ASCII letter case, so ``Web`` and ``web`` are one upstream.
``name_key`` gives the key every comparison, diff and index of upstream names uses; nothing else
lowers a name.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, TypeVar, overload

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError

MAX_NAME_LENGTH = 128
NAME_RULE = (
    f"an upstream name is 1 to {MAX_NAME_LENGTH} characters from A-Z a-z 0-9 _ . -, "
    "and starts with a letter, a digit or _"
)

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ALLOWED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def _describe(char: str) -> str:
    if char.isspace():
        return "whitespace"
    if ord(char) < 32 or ord(char) == 127:
        return f"a control character (0x{ord(char):02x})"
    return f"{char!r}"


def name_check(name: Any) -> tuple[str, str] | None:
    """(rule id, why) when ``name`` breaks the rule, or None when it is valid."""
    if not isinstance(name, str):
        return "name.type", f"must be a string, not {type(name).__name__}"
    if not name:
        return "name.empty", "is empty"
    if len(name) > MAX_NAME_LENGTH:
        return "name.length", f"is {len(name)} characters long, over the limit of {MAX_NAME_LENGTH}"
    for char in name:
        if char not in _ALLOWED:
            return "name.charset", f"contains {_describe(char)}"
    if not _NAME_RE.match(name):
        return "name.first_char", f"starts with {name[0]!r}"
    return None


def name_problem(name: Any) -> str | None:
    """Return why ``name`` breaks the rule, or None when it is valid."""
    found = name_check(name)
    return found[1] if found else None


def validate_name(name: Any) -> str:
    """Return ``name`` unchanged, or raise ValidationError naming the value and the rule."""
    found = name_check(name)
    if found:
        raise ValidationError("upstream name", name, f"{found[1]}; {NAME_RULE}", found[0])
    return name


def name_key(name: str) -> str:
    """The key of an upstream name as the data plane compares it: ASCII letters lowered, nothing else.

    Only ASCII is folded (``str.lower`` would also fold ``\u212a`` KELVIN SIGN to ``k``): names read
    from ``/detail`` that break the rule must not collide with valid ones.
    """
    return name.lower() if name.isascii() else name.translate(_ASCII_LOWER)


V = TypeVar("V")


def by_key(mapping: Mapping[str, V]) -> dict[str, tuple[str, V]]:
    """``{name_key(name): (name, value)}`` of ``mapping``; of two names with one key, the first in sorted order."""
    keyed: dict[str, tuple[str, V]] = {}
    for name in sorted(mapping):
        keyed.setdefault(name_key(name), (name, mapping[name]))
    return keyed


@overload
def same_names(mapping: Mapping[str, V], names: Iterable[str]) -> dict[str, V]:
    ...


@overload
def same_names(mapping: None, names: Iterable[str]) -> None:
    ...


def same_names(mapping: Mapping[str, V] | None, names: Iterable[str]) -> dict[str, V] | None:
    """``mapping`` with each entry whose key is the key of one of ``names`` stored under that spelling.

    The interface and the file may hold ``Web`` while a caller asks for ``web``: for the data plane they
    are one upstream, so the caller finds it under its own spelling. Other entries are kept as they are;
    None stays None.
    """
    if mapping is None:
        return None
    wanted = {name_key(name): name for name in names}
    out: dict[str, V] = {}
    for name, value in mapping.items():
        spelling = wanted.get(name_key(name), name)
        if spelling in out and spelling != name:
            continue  # both spellings held (never by a case-insensitive interface): the exact one wins
        out[spelling] = value
    return out


def unique_names(names: Iterable[str], where: str) -> None:
    """Raise ValidationError when two of ``names`` differ only in letter case (the data plane's one upstream)."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name_key(name), name)
        if other != name:
            raise ValidationError(where, name, f"names {other!r} and {name!r} differ only in letter case; nginx, "
                                               "Tengine and the Lua flavor treat them as one upstream",
                                  "name.case_clash")
