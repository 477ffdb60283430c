"""Where the kit keeps things: the cache (base root filesystems, the package cache) outside the
checkout, and each run's state and overlays."""

from __future__ import annotations

import os
from pathlib import Path

CACHE = Path(os.environ.get("SKDY_HOSTS_CACHE", "/var/cache/swallowkeeper-dyups/hosts"))
RUNS = Path(os.environ.get("SKDY_HOSTS_RUNS", "/var/tmp/swallowkeeper-dyups-hosts"))
PREFIX = "skdy"          # bridges skdy<K>, machines sk<K>-<name>: what `cleanup` looks for
SUBNET = "198.18"        # 198.18.K.0/24 per run (198.18.0.0/15 is reserved for network testing)


def run_dir(run_id: str) -> Path:
    return RUNS / run_id
