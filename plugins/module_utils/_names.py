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
"""

from __future__ import annotations

import re
from typing import Any

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError

MAX_NAME_LENGTH = 128
NAME_RULE = (
    f"an upstream name is 1 to {MAX_NAME_LENGTH} characters from A-Z a-z 0-9 _ . -, "
    "and starts with a letter, a digit or _"
)

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
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
