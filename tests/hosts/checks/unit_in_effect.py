"""Run ON a test host: is each hardening setting of a systemd unit in effect?

  unit_in_effect.py UNIT

Reads the unit's file (`systemctl show -p FragmentPath`), takes every setting of its [Service]
section from `NoNewPrivileges=` on (the hardening block) plus User and Group, and compares each with
what `systemctl show` reports for the running unit; then looks at the main process itself: no new
privileges, empty capability sets, a seccomp filter, a read-only /usr and /etc and a writable
ReadWritePaths= in its mount namespace. Prints JSON {"checked": [...], "problems": [...]}; exit 1
when there is a problem. Standard library only (the host has python3 and nothing else).
"""

import json
import subprocess
import sys

BOOLEAN = {"true": "yes", "false": "no", "yes": "yes", "no": "no", "on": "yes", "off": "no", "1": "yes",
           "0": "no"}


def show(unit, prop):
    out = subprocess.run(["systemctl", "show", "-p", prop, "--value", unit], capture_output=True, text=True,
                         check=True).stdout
    return out.strip()


def settings(path):
    wanted, section, started = [], None, False
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            line = raw.strip()
            if line.startswith("["):
                section = line
                continue
            if section != "[Service]" or not line or line.startswith("#") or "=" not in line:
                continue
            key, value = line.split("=", 1)
            if key == "NoNewPrivileges":
                started = True
            if started or key in ("User", "Group"):
                wanted.append((key, value))
    return wanted


def size_bytes(text):
    """systemd's size syntax (512M, 1G, 4096) as the number of bytes systemctl show reports."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if text[-1:].upper() in units:
        return str(int(float(text[:-1]) * units[text[-1].upper()]))
    return text


def same(key, want, got):
    if key in ("MemoryMax", "MemoryHigh"):
        return size_bytes(want) == got
    if want.lower() in BOOLEAN and key not in ("User", "Group"):
        return BOOLEAN[want.lower()] == BOOLEAN.get(got.lower(), got)
    if key in ("RestrictAddressFamilies", "CapabilityBoundingSet", "AmbientCapabilities", "ReadWritePaths"):
        return sorted(want.split()) == sorted(got.split())
    return want == got


def process_checks(unit, pid, problems, checked):
    status = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        for line in handle:
            key, _sep, value = line.partition(":")
            status[key] = value.strip()
    expect = {"NoNewPrivs": "1", "CapBnd": "0000000000000000", "CapAmb": "0000000000000000",
              "CapEff": "0000000000000000", "Seccomp": "2"}
    for key, want in expect.items():
        checked.append(f"/proc/{pid}/status {key}")
        if status.get(key) != want:
            problems.append(f"{unit} main process {pid}: {key} is {status.get(key)}, expected {want}")
    writable = show(unit, "ReadWritePaths").split()
    probes = [("/usr", False), ("/etc", False)] + [(path, True) for path in writable]
    for path, should_write in probes:
        checked.append(f"write in {path} (mount namespace of {pid})")
        test = subprocess.run(["nsenter", "-t", str(pid), "-m", "--", "sh", "-c",
                               f'f="{path}/.skdy-probe-$$"; : > "$f" && rm -f "$f"'],
                              capture_output=True, text=True, check=False)
        if (test.returncode == 0) != should_write:
            problems.append(f"{unit}: {path} is {'writable' if test.returncode == 0 else 'read-only'} for its "
                            f"process, expected {'writable' if should_write else 'read-only'} ({test.stderr.strip()})")


def main(unit):
    problems, checked = [], []
    path = show(unit, "FragmentPath")
    for key, want in settings(path):
        got = show(unit, key)
        checked.append(f"{key}={want}")
        if not same(key, want, got):
            problems.append(f"{key}: the unit sets {want!r}, systemctl show reports {got!r}")
    pid = show(unit, "MainPID")
    if pid in ("", "0"):
        problems.append(f"{unit} has no main process")
    else:
        process_checks(unit, pid, problems, checked)
    print(json.dumps({"unit": unit, "fragment": path, "checked": checked, "problems": problems}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
