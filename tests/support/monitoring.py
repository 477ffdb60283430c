"""The monitoring files of docs/monitoring/ (alert rules, their promtool tests, the Grafana dashboard) and
the metric names they use, for the tests that check each name against what the watcher exports."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "docs" / "monitoring"
RULES = MONITORING / "alerts.yml"
RULES_TEST = MONITORING / "alerts_test.yml"
DASHBOARD = MONITORING / "dashboard.json"
FILES = (RULES, RULES_TEST, DASHBOARD)

# A metric name the watcher's files may use: its own prefix, or the process_* metrics.
NAME = re.compile(r"\b((?:swallowkeeper_watcher|process)_[a-zA-Z0-9_]*)")


def exported_names(exposition: str) -> set[str]:
    """Every sample name of a Prometheus text exposition (a histogram: NAME_bucket, NAME_sum, NAME_count)."""
    names = set()
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def used_names(path: Path) -> set[str]:
    """Every metric name in a file (expressions, series, and the metrics its texts name)."""
    return set(NAME.findall(path.read_text(encoding="utf-8")))


def dashboard_queries() -> list[str]:
    """Every PromQL query of the dashboard: its panels' targets and its query variables."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    queries += [variable["query"]["query"] for variable in dashboard["templating"]["list"]
                if variable["type"] == "query"]
    return queries


def get_from(host: str, port: int, path: str = "/metrics", source: str | None = "127.0.0.1") -> str:
    """The raw HTTP/1.0 answer to GET ``path`` sent from the local address ``source`` (any of 127.0.0.0/8
    is ours on loopback; None: the kernel's choice); '' when the server closed without answering."""
    with socket.create_connection((host, port), timeout=5, source_address=(source, 0) if source else None) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode()
