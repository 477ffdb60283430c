"""tests/tools/ansible_failures.py: the one line per failed task that CI's summary of FAILED lines keeps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "tests" / "tools" / "ansible_failures.py"
spec = importlib.util.spec_from_file_location("ansible_failures", SCRIPT)
ansible_failures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ansible_failures)

LOG = """\
TASK [Wait for Consul to have a leader again] **********************************
FAILED - RETRYING: [instance]: Wait for Consul to have a leader again (60 retries left).
ok: [instance]

TASK [Sync-survives-reload - the upstream is in the file nginx includes] *******
fatal: [instance]: FAILED! =>
    assertion: ('upstream ' ~ _sv_service ~ ' {') in (_sv_file_content.content | b64decode)
    changed: false
    msg: sync.yml did not write SyncSurvivesReload into /var/lib/x.conf
...ignoring

TASK [Read] ********************************************************************
fatal: [s2 -> localhost]: FAILED! => {"changed": false, "rc": 2}
"""


def test_each_failed_task_gives_its_name_and_message():
    assert ansible_failures.failures(LOG.splitlines()) == [
        ("instance", "Sync-survives-reload - the upstream is in the file nginx includes",
         "msg: sync.yml did not write SyncSurvivesReload into /var/lib/x.conf"),
        ("s2 -> localhost", "Read", '{"changed": false, "rc": 2}'),
    ]


def test_a_log_without_failures_gives_nothing(tmp_path, capsys):
    log = tmp_path / "log"
    log.write_text("TASK [x] ***\nok: [instance]\n")
    assert ansible_failures.main(["", "scenario", str(log)]) == 0
    assert capsys.readouterr().out == ""
