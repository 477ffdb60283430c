"""The run's bridge: the host end of every container's veth link, with the host's address
198.18.K.1/24. Containers get 198.18.K.10+i, no gateway: nothing beyond the host is routed."""

from __future__ import annotations

import ipaddress
import json

from tests.hosts.errors import HostsError
from tests.hosts.paths import PREFIX, SUBNET
from tests.hosts.system import run


def used_subnets() -> set[int]:
    """The K of every 198.18.K.x address on this machine."""
    out = run(["ip", "-j", "-4", "addr", "show"]).stdout
    used = set()
    for link in json.loads(out or "[]"):
        for addr in link.get("addr_info", []):
            ip = ipaddress.ip_address(addr["local"])
            if ip in ipaddress.ip_network(f"{SUBNET}.0.0/16"):
                used.add(int(str(ip).split(".")[2]))
    return used


def free_subnet() -> int:
    used = used_subnets()
    for k in range(1, 255):
        if k not in used:
            return k
    raise HostsError(f"no free {SUBNET}.K.0/24 subnet on this machine")


def bridge_name(k: int) -> str:
    return f"{PREFIX}{k}"


def create_bridge(k: int) -> str:
    name = bridge_name(k)
    run(["ip", "link", "add", name, "type", "bridge"])
    run(["ip", "addr", "add", f"{SUBNET}.{k}.1/24", "dev", name])
    run(["ip", "link", "set", name, "up"])
    return name


def delete_bridge(name: str) -> None:
    if run(["ip", "link", "show", name], check=False, quiet=True).returncode == 0:
        run(["ip", "link", "delete", name], check=False)


def leftover_bridges() -> list[str]:
    out = run(["ip", "-j", "link", "show", "type", "bridge"]).stdout
    return [link["ifname"] for link in json.loads(out or "[]")
            if link["ifname"].startswith(PREFIX) and link["ifname"][len(PREFIX):].isdigit()]


def link_state(name: str, up: bool) -> None:
    """Bring a container's host-side link down (cut off) or up again."""
    run(["ip", "link", "set", name, "up" if up else "down"])
