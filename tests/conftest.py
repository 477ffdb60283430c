"""Shared pytest set-up: the collection import path (see tests/support/collection.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.collection import ensure_importable  # noqa: E402

ensure_importable()
