"""Run ``ansible`` and ``ansible-playbook`` as subprocesses against localhost (connection local).

    runner = AnsibleRunner(tmp_path)
    done = runner.adhoc("swallowkeeper.dyups.dyups_upstream", "name=x servers=127.0.0.1:1")
    done.module             # the task's result dict
    done = runner.playbook(text, check=True, diff=True)
    done.tasks              # [(task name, result dict), ...]
    done.task("name")       # the result of the task with that name
    done.stdout             # what the default callback printed (diffs included)

Results are collected by tests/support/callback_plugins/record_results.py (ansible-core 2.19 ships no
json stdout callback); the default callback prints as usual.

The managed node is this machine, run with the virtual environment's Python, and the collection comes
from the checkout (ANSIBLE_COLLECTIONS_PATH set by tests/support/collection.py) unless
``collections_path`` says otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.collection import COLLECTIONS

BIN = Path(sys.executable).parent
CALLBACKS = Path(__file__).resolve().parent / "callback_plugins"


class Completed:
    def __init__(self, done, record):
        self.rc = done.returncode
        self.stdout = done.stdout
        self.stderr = done.stderr
        lines = record.read_text().splitlines() if record.exists() else []
        record.unlink(missing_ok=True)
        self.tasks = []
        for entry in map(json.loads, lines):
            if entry["status"] == "failed":  # ansible-core 2.19 hands callbacks the result without "failed"
                entry["result"]["failed"] = True
            self.tasks.append((entry["task"], entry["result"]))

    @property
    def module(self):
        """The result of the last task (the only one for an ad hoc run)."""
        if not self.tasks:
            raise AssertionError(f"ansible reported no task result (rc {self.rc}):\n{self.stdout}\n{self.stderr}")
        return self.tasks[-1][1]

    def task(self, name):
        matches = [result for task_name, result in self.tasks if task_name == name]
        if not matches:
            raise AssertionError(f"no task {name!r} in {[n for n, _r in self.tasks]}")
        return matches[-1]


class AnsibleRunner:
    def __init__(self, workdir, host="localhost", group="tengine", collections_path=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.group = group
        self.inventory = self.workdir / "inventory.ini"
        self.inventory.write_text(
            f"[{group}]\n{host} ansible_connection=local ansible_python_interpreter={sys.executable}\n")
        self.collections_path = str(collections_path or COLLECTIONS)
        self.record = self.workdir / "results.jsonl"

    def env(self):
        env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
        env.update(
            ANSIBLE_COLLECTIONS_PATH=self.collections_path,
            ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
            ANSIBLE_LOCAL_TEMP=str(self.workdir / ".ansible-local"),
            ANSIBLE_REMOTE_TEMP=str(self.workdir / ".ansible-remote"),
            ANSIBLE_HOME=str(self.workdir / ".ansible-home"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
            ANSIBLE_HOST_KEY_CHECKING="false",
            ANSIBLE_RETRY_FILES_ENABLED="false",
            ANSIBLE_DEPRECATION_WARNINGS="false",
            ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
            ANSIBLE_CALLBACK_PLUGINS=str(CALLBACKS),
            ANSIBLE_CALLBACKS_ENABLED="record_results",
            RECORD_RESULTS_FILE=str(self.record),
            PATH=f"{BIN}:{os.environ.get('PATH', '')}",
        )
        env.pop("PYTHONPATH", None)
        return env

    def _run(self, argv, timeout):
        self.record.unlink(missing_ok=True)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env(), cwd=self.workdir,
                              check=False)
        return Completed(done, self.record)

    def adhoc(self, module, args, pattern=None, check=False, diff=False, timeout=120):
        argv = [str(BIN / "ansible"), pattern or self.group, "-i", str(self.inventory), "-m", module, "-a", args]
        if check:
            argv.append("--check")
        if diff:
            argv.append("--diff")
        return self._run(argv, timeout)

    def playbook(self, text, check=False, diff=False, extra_vars=None, timeout=300, tags=None):
        path = self.workdir / "playbook.yml"
        path.write_text(text)
        argv = [str(BIN / "ansible-playbook"), "-i", str(self.inventory), str(path)]
        if tags:
            argv += ["--tags", tags]
        if check:
            argv.append("--check")
        if diff:
            argv.append("--diff")
        if extra_vars:
            argv += ["-e", json.dumps(extra_vars)]
        return self._run(argv, timeout)
