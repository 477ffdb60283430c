"""Make this checkout importable as ``ansible_collections.swallowkeeper.dyups``.

Ansible (and the collection's own absolute imports) need the tree to sit at
``.../ansible_collections/swallowkeeper/dyups``. A checkout can live anywhere, so
``.cache/collections-<hash of the checkout's path>/ansible_collections/swallowkeeper/dyups`` is made
a symlink to the checkout; that folder goes on ``sys.path`` and into
``ANSIBLE_COLLECTIONS_PATH`` for the ansible commands the tests run.
"""

import hashlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# One folder per checkout (named by its path): .cache may be shared between checkouts (git worktrees that
# link one .cache), and one shared link would make every checkout's tests import whichever checkout made it.
COLLECTIONS = ROOT / ".cache" / f"collections-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"
LINK = COLLECTIONS / "ansible_collections" / "swallowkeeper" / "dyups"


def ensure_importable():
    LINK.parent.mkdir(parents=True, exist_ok=True)
    if not LINK.is_symlink() or os.readlink(LINK) != str(ROOT):
        tmp = LINK.with_name(f".dyups.{os.getpid()}")
        tmp.symlink_to(ROOT, target_is_directory=True)
        os.replace(tmp, LINK)
    if str(COLLECTIONS) not in sys.path:
        sys.path.insert(0, str(COLLECTIONS))
    os.environ["ANSIBLE_COLLECTIONS_PATH"] = str(COLLECTIONS)
    return COLLECTIONS
