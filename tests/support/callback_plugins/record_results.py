# Test helper, not part of the collection: writes every task result as JSON lines to $RECORD_RESULTS_FILE.
# ansible-core 2.19 no longer ships the json stdout callback, and the tests also want the default
# callback's text (diffs), so this runs beside it as an enabled notification callback.
from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: record_results
type: notification
short_description: write task results as JSON lines (tests only)
description: Appends one JSON object per task result to the file named by RECORD_RESULTS_FILE.
requirements:
  - enable in ANSIBLE_CALLBACKS_ENABLED
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "record_results"
    CALLBACK_NEEDS_ENABLED = True

    def _record(self, result, status):
        path = os.environ.get("RECORD_RESULTS_FILE")
        if not path:
            return
        entry = {"task": result.task_name if hasattr(result, "task_name") else result._task.get_name(),
                 "host": result._host.get_name(), "status": status,
                 "result": self._clean(result._result)}
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")

    @staticmethod
    def _clean(value):
        return json.loads(json.dumps(value, default=str))

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")
