"""Polling until a condition holds, for the test helpers that start servers (one copy of the loop).

    wait_for(lambda: agent.up(), "the agent answers", timeout=10, tail=agent.log_text)
"""

from __future__ import annotations

import time


def wait_for(predicate, what, timeout=10.0, interval=0.02, tail=None, tail_name="log"):
    """Call ``predicate()`` until it returns a true value, which is returned. A predicate that raises
    counts as not yet (things settle); after ``timeout`` seconds an AssertionError names ``what``,
    the last exception, and the end of ``tail()`` (a server's log) when given."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the condition may fail while things settle; report the last one
            last_error = exc
        time.sleep(interval)
    shown = f"\n--- {tail_name} tail ---\n{tail()[-4000:]}" if tail else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error!r}){shown}")
