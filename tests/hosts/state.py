"""A run's state (state.json in its directory), written as each part is made so that `down` and
`cleanup` can undo a run that failed or was interrupted half-way."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.hosts.paths import run_dir


def load(run_id: str) -> dict:
    path = run_dir(run_id) / "state.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"id": run_id, "containers": []}


def save(state: dict) -> None:
    directory = run_dir(state["id"])
    directory.mkdir(parents=True, exist_ok=True)
    path: Path = directory / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
    os.replace(tmp, path)
