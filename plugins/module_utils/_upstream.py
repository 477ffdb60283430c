# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: an upstream (name, servers, directives) and the gate that builds it.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An upstream as the interface and the file both hold it.

``build_upstream`` is the single gate: everything that becomes a POST body or
a block of the upstream file has passed the name, server and directive rules
here. The POST body (``_dyups_wire.post_body``) and the file block are
rendered from the same ``statements()`` so the two can never disagree: a
POST replaces the whole upstream, and anything the file holds but the body
lacks (a ``check``, a ``keepalive``) would be silently dropped by Tengine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._directives import NO_BACKUP, Directive, parse_directives
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import validate_name
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import (
    Server, parse_servers, sort_servers)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._slots import with_slots


@with_slots  # a watcher holds one per upstream
@dataclass(frozen=True)
class Upstream:
    name: str
    servers: tuple[Server, ...]
    directives: tuple[Directive, ...] = ()

    def statements(self) -> list[str]:
        """Balancing method first, then servers (sorted), then the other directives: nginx's order.

        ``build_upstream`` already put the balancing method first among the directives.
        """
        first = [d.line() for d in self.directives if d.is_balancing]
        last = [d.line() for d in self.directives if not d.is_balancing]
        return first + [server.directive() for server in self.servers] + last

    def directive_lines(self) -> list[str]:
        return [directive.line() for directive in self.directives]

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "servers": [server.spec() for server in sort_servers(self.servers)],
            "directives": [directive.text for directive in self.directives],
        }


def build_upstream(name: str, servers: Any, directives: Any = None) -> Upstream:
    """Validate and build an Upstream; raises ValidationError before anything is sent or written."""
    validate_name(name)
    parsed = parse_servers(servers if servers is not None else [])
    if not parsed:
        raise ValidationError("upstream", name, "has no servers; nginx refuses an upstream without servers "
                                                "(use state=absent to remove it)", "upstream.no_servers")
    if all(server.backup for server in parsed):
        raise ValidationError("upstream", name, "every server is a backup server; nginx needs at least one that is "
                                                "not (Tengine answers 500)", "upstream.all_backup")
    parsed_directives = parse_directives(directives)
    for directive in parsed_directives:
        if directive.name in NO_BACKUP and any(server.backup for server in parsed):
            raise ValidationError("upstream", name, f"nginx's {directive.name} balancing does not support backup servers",
                                  "upstream.backup_balancing")
    ordered = tuple(d for d in parsed_directives if d.is_balancing) + tuple(
        d for d in parsed_directives if not d.is_balancing)
    return Upstream(name=name, servers=tuple(sort_servers(parsed)), directives=ordered)


def spec_parts(name: str, spec: Any) -> tuple[Any, Any]:
    """(servers, directives or None) of the bulk form: a list of servers, or a dict with servers and directives."""
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - {"servers", "directives"})
        if unknown:
            raise ValidationError("upstream", name, f"unknown key(s) {', '.join(unknown)}; use servers and directives",
                                  "upstream.keys")
        return spec.get("servers"), spec.get("directives")
    return spec, None


def upstream_from_spec(name: str, spec: Any) -> Upstream:
    """An Upstream from the bulk form: a list of servers, or a dict with servers and directives."""
    return build_upstream(name, *spec_parts(name, spec))
